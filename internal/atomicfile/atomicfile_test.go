package atomicfile

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

func TestWriteReplacesWhole(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	for _, tc := range []struct {
		name string
		data string
		perm os.FileMode
	}{
		{"create", "first", 0o600},
		{"replace longer", "second, longer", 0o644},
		{"replace shorter", "3", 0o600},
		{"empty", "", 0o600},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := Write(path, []byte(tc.data), tc.perm); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.data {
				t.Fatalf("got %q, want %q", got, tc.data)
			}
			if st, _ := os.Stat(path); runtime.GOOS != "windows" && st.Mode().Perm() != tc.perm {
				t.Errorf("mode %v, want %v", st.Mode().Perm(), tc.perm)
			}
			ents, _ := os.ReadDir(dir)
			if len(ents) != 1 {
				t.Errorf("temporary files left behind: %v", ents)
			}
		})
	}
}

func TestCopy(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	os.WriteFile(src, []byte("bundle bytes"), 0o600)
	if err := Copy(dst, src, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dst); string(got) != "bundle bytes" {
		t.Fatalf("copy holds %q", got)
	}
	if err := Copy(dst, filepath.Join(dir, "missing"), 0o600); err == nil {
		t.Fatal("copying a missing file succeeded")
	}
	if got, _ := os.ReadFile(dst); string(got) != "bundle bytes" {
		t.Fatalf("a failed copy changed the destination to %q", got)
	}
}
