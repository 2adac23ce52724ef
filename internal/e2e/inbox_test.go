//go:build unix

package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// waitFor polls cond until it holds or 30 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// TestInboxEndToEnd drops files into the inbox of a running agent: good
// JSON and CSV become records, a broken file lands in rejected/ with its
// reason, and a file written slowly is taken only once complete.
func TestInboxEndToEnd(t *testing.T) {
	_, dir := newSite(t)
	daemon := exec.Command(bin("agent"), "--dir", dir, "run", "--settle", "400ms")
	var derr bytes.Buffer
	daemon.Stderr = &derr
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		daemon.Process.Signal(os.Interrupt)
		daemon.Wait()
		if t.Failed() {
			t.Logf("daemon stderr:\n%s", derr.String())
		}
	}()
	inbox := filepath.Join(dir, "inbox")
	waitFor(t, "the daemon", func() bool { return fileExists(filepath.Join(dir, "control.sock")) })

	write := func(name, body string) {
		t.Helper()
		// Write beside and rename in, as a careful tool would; the slow
		// writer below is the careless one.
		tmp := filepath.Join(inbox, "."+name)
		if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(inbox, name)); err != nil {
			t.Fatal(err)
		}
	}
	write("deliveries.json", `[
	  {"type": "delivery", "item": "FortiGate 100F firewall", "qty": 2, "serial": ["FGT-1", "FGT-2"], "condition": "ok", "received_by": "O. Kovalenko"},
	  {"type": "training", "course": "OT incident response", "date": "2026-11-20", "attendees": 12, "provider": "CERT-EE"}
	]`)
	write("switches.csv", "type,item,qty,serial,condition\ndelivery,Cisco C9300 switch,3,SW-1|SW-2|SW-3,ok\ndelivery,UPS 3kVA,1,,damaged\n")
	write("broken.json", `{"type": "delivery", "item": "Router", "qty": "three"}`)

	// The slow writer: five pieces, 150 ms apart, each below the settle time.
	slow := filepath.Join(inbox, "slow.csv")
	pieces := []string{"type,item,qty\n", "delivery,Serv", "er R650,2\n", "delivery,Rack ", "42U,1\n"}
	f, err := os.Create(slow)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pieces {
		f.WriteString(p)
		f.Sync()
		time.Sleep(150 * time.Millisecond)
		if fileExists(filepath.Join(inbox, "done", "slow.csv")) || fileExists(filepath.Join(inbox, "rejected", "slow.csv")) {
			t.Fatal("slow.csv was taken while still being written")
		}
	}
	f.Close()

	for _, name := range []string{"deliveries.json", "switches.csv", "slow.csv"} {
		waitFor(t, name+" in done/", func() bool { return fileExists(filepath.Join(inbox, "done", name)) })
	}
	waitFor(t, "broken.json in rejected/", func() bool { return fileExists(filepath.Join(inbox, "rejected", "broken.json.reason")) })
	reason, _ := os.ReadFile(filepath.Join(inbox, "rejected", "broken.json.reason"))
	if !strings.Contains(string(reason), "qty") {
		t.Errorf("rejection reason %q does not name the field", reason)
	}
	out := run(t, "agent", "--dir", dir, "list", "--json")
	for _, want := range []string{"FortiGate 100F firewall", "OT incident response", "Cisco C9300 switch", "UPS 3kVA", "Server R650", "Rack 42U"} {
		if !strings.Contains(out, want) {
			t.Errorf("record %q missing from agent list", want)
		}
	}
	if strings.Contains(out, "Router") {
		t.Error("a record of the rejected file was stored")
	}
	if n := strings.Count(out, `"type": "delivery"`) + strings.Count(out, `"type": "training"`); n != 6 {
		t.Errorf("got %d records, want 6", n)
	}
}
