// Package e2e drives the real agent and hub binaries, as a site engineer and
// a hub operator would: script tests in testdata/*.txtar (run by
// rogpeppe/go-internal/testscript, as filippo.io/age tests its CLI), and
// crash tests that kill the binaries with SIGKILL at random moments.
package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
)

// binDir holds the agent and hub binaries built once for the whole run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fieldsync-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	args := []string{"build", "-o", dir + string(os.PathSeparator)}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "fieldsync/cmd/agent", "fieldsync/cmd/hub", "filippo.io/age/cmd/age")
	cmd := exec.Command("go", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// bin returns the path of a built binary.
func bin(name string) string {
	if runtime.GOOS == "windows" {
		name += ".exe"
	}
	return filepath.Join(binDir, name)
}

// freeUDPAddr returns a loopback UDP address nobody listens on right now.
func freeUDPAddr(t testing.TB) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata",
		Setup: func(env *testscript.Env) error {
			env.Setenv("PATH", binDir+string(os.PathListSeparator)+env.Getenv("PATH"))
			env.Setenv("HUBADDR", freeUDPAddr(env.T().(testing.TB)))
			env.Setenv("FIELDSYNC_DIR", "")
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			// waitlog FILE TEXT waits up to 20 s for TEXT to appear in FILE.
			"waitlog": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) != 2 {
					ts.Fatalf("usage: waitlog FILE TEXT")
				}
				deadline := time.Now().Add(20 * time.Second)
				for time.Now().Before(deadline) {
					b, _ := os.ReadFile(ts.MkAbs(args[0]))
					if strings.Contains(string(b), args[1]) {
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
				ts.Fatalf("%q did not appear in %s within 20s", args[1], args[0])
			},
			// flipbyte FILE OFFSET flips one bit of the byte at OFFSET (negative: from the end).
			"flipbyte": func(ts *testscript.TestScript, neg bool, args []string) {
				path := ts.MkAbs(args[0])
				b, err := os.ReadFile(path)
				ts.Check(err)
				var off int
				fmt.Sscan(args[1], &off)
				if off < 0 {
					off += len(b)
				}
				b[off] ^= 0x01
				ts.Check(os.WriteFile(path, b, 0o600))
			},
			// truncate FILE N keeps the first N bytes.
			"truncate": func(ts *testscript.TestScript, neg bool, args []string) {
				var n int64
				fmt.Sscan(args[1], &n)
				ts.Check(os.Truncate(ts.MkAbs(args[0]), n))
			},
			// cpglob DIR GLOB DST copies the single file matching GLOB in DIR to DST.
			"cpglob": func(ts *testscript.TestScript, neg bool, args []string) {
				m, _ := filepath.Glob(filepath.Join(ts.MkAbs(args[0]), args[1]))
				if len(m) != 1 {
					ts.Fatalf("%s/%s matches %d files, want 1", args[0], args[1], len(m))
				}
				b, err := os.ReadFile(m[0])
				ts.Check(err)
				ts.Check(os.WriteFile(ts.MkAbs(args[2]), b, 0o600))
			},
		},
	})
}
