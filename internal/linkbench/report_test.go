package linkbench

import "testing"

func TestReplaceSection(t *testing.T) {
	tests := []struct {
		name, text, want string
	}{
		{"empty file", "", "# Benchmarks\n\n## Link (issue 4)\n\nnew\n"},
		{"other sections kept", "# Benchmarks\n\n## WAL\n\nwal numbers\n",
			"# Benchmarks\n\n## WAL\n\nwal numbers\n\n## Link (issue 4)\n\nnew\n"},
		{"replaced at the end", "# B\n\n## WAL\n\nw\n\n## Link (issue 4)\n\nold\nold\n",
			"# B\n\n## WAL\n\nw\n\n## Link (issue 4)\n\nnew\n"},
		{"replaced in the middle", "# B\n\n## Link (issue 4)\n\nold\n\n## WAL\n\nw\n",
			"# B\n\n## Link (issue 4)\n\nnew\n\n## WAL\n\nw\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := replaceSection(tt.text, "new\n"); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
