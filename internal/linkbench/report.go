package linkbench

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"fieldsync/internal/linksim"
)

// Row is one measured transfer in the report.
type Row struct {
	Scenario string // a profile's name, or "cut (geo)"
	Profile  linksim.Profile
	Payload  Payload
	Result   Result
	Note     string // why there is no result, or a remark
}

// WriteTable writes rows as a Markdown table.
func WriteTable(w io.Writer, rows []Row) {
	fmt.Fprintln(w, "| link | method | time | goodput, % of link | steady, % of link | link bytes per payload byte (up / both) | delivered above UDP per payload byte (up / both) | lost to the outage, re-sent | data again after the link's return | dials |")
	fmt.Fprintln(w, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, r := range rows {
		res := r.Result
		if r.Note != "" && res.Took == 0 {
			fmt.Fprintf(w, "| %s | %s | — | — | — | — | — | — | — | %s |\n", r.Scenario, res.Method, r.Note)
			continue
		}
		took := res.Took.Round(100 * time.Millisecond).String()
		if res.Err != nil {
			took += " (" + shortErr(res.Err) + ")"
		}
		// Per byte of user data moved: a run stopped early moved a share
		// of it.
		user := float64(r.Payload.UserBytes) * float64(res.Bytes) / float64(max(r.Payload.Bytes(), 1))
		up := float64(res.Up.Sent.WireBytes()) / user
		both := float64(res.Up.Sent.WireBytes()+res.Down.Sent.WireBytes()) / user
		// What reached the other end, above IP and UDP: the protocol's,
		// QUIC's and age's bytes, without what the link destroyed.
		gotUp := float64(res.Up.Delivered.Bytes) / user
		gotBoth := float64(res.Up.Delivered.Bytes+res.Down.Delivered.Bytes) / user
		lost, again := "—", "—"
		if res.OutageAt > 0 {
			lost = kb(res.LinkBytesLost)
			if res.ChunkBytesResent > 0 {
				lost += " + " + kb(res.ChunkBytesResent) + " of chunks"
			}
			if res.ResumeAfter > 0 {
				again = fmt.Sprintf("%v (%.1f RTT)", res.ResumeAfter.Round(time.Millisecond), res.ResumeAfter.Seconds()/(2*r.Profile.Delay).Seconds())
			}
		}
		dials := "—"
		if res.Dials > 0 {
			dials = fmt.Sprint(res.Dials)
		}
		steady := "—"
		if res.Steady > 0 {
			steady = fmt.Sprintf("%.0f", 100*res.Steady)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %.0f | %s | %.3f / %.3f | %.3f / %.3f | %s | %s | %s |\n",
			r.Scenario, res.Method, took, 100*res.Goodput(r.Profile), steady, up, both, gotUp, gotBoth, lost, again, dials)
	}
}

func shortErr(err error) string {
	s := err.Error()
	if len(s) > 60 {
		s = s[:60] + "…"
	}
	return s
}

func kb(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// Machine describes where the benchmark ran.
func Machine() string {
	cpu := runtime.GOARCH
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := runtime.GOOS
	if out, err := exec.Command("uname", "-sr").Output(); err == nil {
		kernel = strings.TrimSpace(string(out))
	}
	return fmt.Sprintf("%s, %d CPUs, %s, %s", cpu, runtime.NumCPU(), kernel, runtime.Version())
}

// Section is the heading of the benchmark's section in
// docs/benchmarks.md.
const Section = "## Link (issue 4)"

// WriteSection replaces the Link section of the Markdown file at path
// (from its heading to the next "## " heading) with body, or appends it;
// the file's other sections are kept as they are.
func WriteSection(path, body string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	return os.WriteFile(path, []byte(replaceSection(string(old), body)), 0o644)
}

func replaceSection(text, body string) string {
	section := Section + "\n\n" + strings.TrimSpace(body) + "\n"
	i := strings.Index(text, Section+"\n")
	if i < 0 {
		if strings.TrimSpace(text) == "" {
			return "# Benchmarks\n\n" + section
		}
		return strings.TrimRight(text, "\n") + "\n\n" + section
	}
	rest := text[i+len(Section)+1:]
	if j := strings.Index(rest, "\n## "); j >= 0 {
		return text[:i] + section + "\n" + rest[j+1:]
	}
	return text[:i] + section
}
