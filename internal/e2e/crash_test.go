//go:build unix

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// run runs a binary and returns its stdout, failing the test on error.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(bin(name), args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

// newSite makes a hub and one enrolled agent in fresh directories.
func newSite(t testing.TB) (hubDir, agentDir string) {
	t.Helper()
	root := t.TempDir()
	hubDir, agentDir = filepath.Join(root, "hub"), filepath.Join(root, "site")
	run(t, "hub", "--dir", hubDir, "init")
	enrol := filepath.Join(root, "site.enrol")
	run(t, "hub", "--dir", hubDir, "enroll", "--site", "UA-KV-017", "--name", "Kyiv substation 17",
		"--addr", freeUDPAddr(t), "--out", enrol)
	run(t, "agent", "--dir", agentDir, "init", "--enroll", enrol)
	return hubDir, agentDir
}

type listed struct {
	Records []struct {
		ID  string `json:"id"`
		Seq uint64 `json:"seq"`
	} `json:"records"`
}

func listRecords(t testing.TB, dir string) listed {
	t.Helper()
	var l listed
	if err := json.Unmarshal([]byte(run(t, "agent", "--dir", dir, "list", "--json")), &l); err != nil {
		t.Fatalf("agent list --json: %v", err)
	}
	return l
}

// TestAgentSurvivesSIGKILL records in a loop while killing the agent at
// random moments: every id the binary printed must be there after restart,
// once, and the ledger must open.
func TestAgentSurvivesSIGKILL(t *testing.T) {
	_, dir := newSite(t)
	iterations := 60
	if testing.Short() {
		iterations = 15
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var printed []string
	for i := range iterations {
		cmd := exec.Command(bin("agent"), "--dir", dir, "record", "delivery",
			"--item", fmt.Sprintf("Firewall batch %d", i), "--qty", "1", "--serial", fmt.Sprintf("SN-%d", i))
		var out bytes.Buffer
		cmd.Stdout = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill somewhere between start-up and well after the commit.
		time.Sleep(time.Duration(rng.IntN(40_000)) * time.Microsecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		if id := strings.TrimSpace(out.String()); id != "" {
			printed = append(printed, id)
		}
	}
	l := listRecords(t, dir)
	seen := map[string]int{}
	seqs := map[uint64]bool{}
	for _, r := range l.Records {
		seen[r.ID]++
		if seqs[r.Seq] {
			t.Errorf("sequence %d used twice", r.Seq)
		}
		seqs[r.Seq] = true
	}
	for _, id := range printed {
		if seen[id] != 1 {
			t.Errorf("printed id %s present %d times after restart", id, seen[id])
		}
	}
	t.Logf("%d iterations, %d ids printed before the kill, %d records in the ledger", iterations, len(printed), len(l.Records))
}

// TestParallelRecordersLoseNothing runs several agent processes at once on
// one directory: each waits its turn or goes through the owner, none is lost.
func TestParallelRecordersLoseNothing(t *testing.T) {
	_, dir := newSite(t)
	const procs, each = 6, 5
	var mu sync.Mutex
	var ids []string
	var wg sync.WaitGroup
	for p := range procs {
		wg.Go(func() {
			for i := range each {
				out := run(t, "agent", "--dir", dir, "record", "delivery", "--item", fmt.Sprintf("Switch p%d-%d", p, i), "--qty", "1")
				mu.Lock()
				ids = append(ids, strings.TrimSpace(out))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	l := listRecords(t, dir)
	if len(l.Records) != procs*each {
		t.Fatalf("got %d records, want %d", len(l.Records), procs*each)
	}
	have := map[string]bool{}
	for _, r := range l.Records {
		have[r.ID] = true
	}
	for _, id := range ids {
		if !have[id] {
			t.Errorf("printed id %s missing", id)
		}
	}
}

// TestCommandsGoThroughRunningDaemon records while `agent run` holds the
// directory: the command is passed to the daemon and its id printed.
func TestCommandsGoThroughRunningDaemon(t *testing.T) {
	_, dir := newSite(t)
	daemon := exec.Command(bin("agent"), "--dir", dir, "run")
	var derr bytes.Buffer
	daemon.Stderr = &derr
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		daemon.Process.Signal(os.Interrupt)
		daemon.Wait()
	}()
	deadline := time.Now().Add(20 * time.Second)
	for !fileExists(filepath.Join(dir, "control.sock")) {
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not start: %s", derr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	id := strings.TrimSpace(run(t, "agent", "--dir", dir, "record", "delivery", "--item", "Router", "--qty", "2"))
	if len(id) != 26 {
		t.Fatalf("record printed %q, want an id", id)
	}
	if st := run(t, "agent", "--dir", dir, "status", "--json"); !strings.Contains(st, `"records": 1`) {
		t.Fatalf("status through the daemon: %s", st)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// startHub runs `hub serve` on addr and waits until it listens.
func startHub(t testing.TB, dir, addr string) *exec.Cmd {
	t.Helper()
	os.Remove(filepath.Join(dir, "serving.json"))
	cmd := exec.Command(bin("hub"), "--dir", dir, "serve", "--listen", addr, "--http", "")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !fileExists(filepath.Join(dir, "serving.json")) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("hub did not start listening")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cmd
}

// hubRecordIDs returns the ids of the records the hub holds, failing on a
// duplicate (agent, seq).
func hubRecordIDs(t testing.TB, dir string) map[string]bool {
	t.Helper()
	out := filepath.Join(t.TempDir(), "export.json")
	run(t, "hub", "--dir", dir, "export", "--format", "json", "--out", out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Records []struct {
			ID    string `json:"id"`
			Agent string `json:"agent"`
			Seq   uint64 `json:"seq"`
		} `json:"records"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("hub export: %v", err)
	}
	ids := map[string]bool{}
	seqs := map[string]bool{}
	for _, r := range doc.Records {
		key := fmt.Sprintf("%s/%d", r.Agent, r.Seq)
		if seqs[key] || ids[r.ID] {
			t.Errorf("record %s (%s) applied twice", r.ID, key)
		}
		seqs[key], ids[r.ID] = true, true
	}
	return ids
}

// TestHubSurvivesSIGKILLDuringIntake kills the hub at random moments while
// an agent syncs: every record the hub acknowledged (the agent shows it as
// synced) is at the hub after restart, and none is applied twice.
func TestHubSurvivesSIGKILLDuringIntake(t *testing.T) {
	root := t.TempDir()
	hubDir, agentDir := filepath.Join(root, "hub"), filepath.Join(root, "site")
	addr := freeUDPAddr(t)
	run(t, "hub", "--dir", hubDir, "init")
	enrol := filepath.Join(root, "site.enrol")
	run(t, "hub", "--dir", hubDir, "enroll", "--site", "UA-KV-017", "--name", "Kyiv substation 17", "--addr", addr, "--out", enrol)
	run(t, "agent", "--dir", agentDir, "init", "--enroll", enrol)

	iterations := 12
	if testing.Short() {
		iterations = 4
	}
	rng := rand.New(rand.NewPCG(3, 4))
	hub := startHub(t, hubDir, addr)
	defer func() { hub.Process.Kill(); hub.Wait() }()
	for i := range iterations {
		for j := range 3 {
			run(t, "agent", "--dir", agentDir, "record", "delivery", "--item", fmt.Sprintf("Server %d-%d", i, j), "--qty", "1")
		}
		sync := exec.Command(bin("agent"), "--dir", agentDir, "sync")
		if err := sync.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.IntN(30_000)) * time.Microsecond)
		hub.Process.Signal(syscall.SIGKILL)
		hub.Wait()
		// The power cut takes the agent's sync too, wherever it was.
		sync.Process.Signal(syscall.SIGKILL)
		sync.Wait()
		hub = startHub(t, hubDir, addr)

		// Everything the agent saw acknowledged is at the hub.
		at := hubRecordIDs(t, hubDir)
		var l struct {
			Records []struct {
				ID   string `json:"id"`
				Sync string `json:"sync"`
			} `json:"records"`
		}
		json.Unmarshal([]byte(run(t, "agent", "--dir", agentDir, "list", "--json")), &l)
		for _, r := range l.Records {
			if r.Sync == "synced" && !at[r.ID] {
				t.Fatalf("iteration %d: record %s acknowledged to the agent but missing at the hub", i, r.ID)
			}
		}
	}
	run(t, "agent", "--dir", agentDir, "sync")
	at := hubRecordIDs(t, hubDir)
	l := listRecords(t, agentDir)
	if len(at) != len(l.Records) {
		t.Fatalf("hub holds %d records, agent made %d", len(at), len(l.Records))
	}
}
