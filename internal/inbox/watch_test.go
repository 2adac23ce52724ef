package inbox

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// testSettle is short, so tests are quick, yet long next to the gaps of the
// slow writer in TestWatchSlowWriter.
const testSettle = 300 * time.Millisecond

// ingestCall is one call of fakeIngester.Ingest, with what the files held
// at that moment.
type ingestCall struct {
	file        string
	content     string // of the record file
	entries     []Entry
	attachments map[string]string
	attached    map[string]string // name → content
}

// fakeIngester records its calls.
type fakeIngester struct {
	err   error      // returned by Ingest, if set
	block bool       // Ingest waits for ctx to end
	mu    sync.Mutex // guards calls
	calls []ingestCall
}

func (f *fakeIngester) Ingest(ctx context.Context, file string, entries []Entry, attachments map[string]string) ([]string, error) {
	c := ingestCall{file: file, entries: entries, attachments: attachments, attached: map[string]string{}}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	c.content = string(b)
	for name, path := range attachments {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		c.attached[name] = string(b)
	}
	f.mu.Lock()
	f.calls = append(f.calls, c)
	f.mu.Unlock()
	if f.block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if f.err != nil {
		return nil, f.err
	}
	ids := make([]string, len(entries))
	for i := range ids {
		ids[i] = "R" + string(rune('0'+i%10))
	}
	return ids, nil
}

func (f *fakeIngester) Calls() []ingestCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// logBuffer collects log output for tests.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startWatch runs Watch on dir until the test ends, and returns the log.
func startWatch(t *testing.T, dir string, ing Ingester, opts Options) *logBuffer {
	t.Helper()
	logs := &logBuffer{}
	if opts.Settle == 0 {
		opts.Settle = testSettle
	}
	opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, dir, ing, opts) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Watch did not return after its context ended")
		}
		if t.Failed() {
			t.Logf("log:\n%s", logs)
		}
	})
	return logs
}

// waitFor waits until cond holds, failing the test if it does not within a
// few seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func present(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Lstat(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// names lists the entries of dir.
func names(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}

func mustParse(t *testing.T, name, content string) []Entry {
	t.Helper()
	e, err := Parse(name, strings.NewReader(content))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

const (
	goodJSON = `[{"type": "delivery", "item": "Firewall", "qty": 2, "serial": ["F1", "F2"]},
 {"type": "training", "course": "Backups", "date": "2025-03-14", "attendees": 5}]`
	goodCSV = "type,item,qty,serial\ndelivery,Switch,3,S1|S2|S3\ndelivery,Router,1,\n"
)

func TestWatchIngests(t *testing.T) {
	tests := []struct {
		name, file, content string
	}{
		{"JSON", "batch.json", goodJSON},
		{"CSV", "deliveries.csv", goodCSV},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "inbox")
			ing := &fakeIngester{}
			logs := startWatch(t, dir, ing, Options{})
			waitFor(t, "inbox folders", func() bool { return present(t, filepath.Join(dir, RejectedDir)) })
			writeFile(t, filepath.Join(dir, tt.file), tt.content)

			done := filepath.Join(dir, DoneDir, tt.file)
			waitFor(t, tt.file+" in done", func() bool { return present(t, done) })
			calls := ing.Calls()
			if len(calls) != 1 {
				t.Fatalf("Ingest called %d times, want 1", len(calls))
			}
			c := calls[0]
			if want := filepath.Join(dir, tt.file); c.file != want {
				t.Errorf("Ingest file = %q, want %q", c.file, want)
			}
			if want := mustParse(t, tt.file, tt.content); !reflect.DeepEqual(c.entries, want) {
				t.Errorf("Ingest entries\n got %+v\nwant %+v", c.entries, want)
			}
			if len(c.attachments) != 0 {
				t.Errorf("Ingest attachments = %v, want none", c.attachments)
			}
			if got := readFile(t, done); got != tt.content {
				t.Errorf("done/%s holds %q, want %q", tt.file, got, tt.content)
			}
			if got := names(t, dir); !reflect.DeepEqual(got, []string{DoneDir, RejectedDir}) {
				t.Errorf("inbox holds %v, want only done and rejected", got)
			}
			if got := names(t, filepath.Join(dir, RejectedDir)); len(got) != 0 {
				t.Errorf("rejected holds %v", got)
			}
			if !strings.Contains(logs.String(), "file="+tt.file+" records=2") {
				t.Errorf("log does not say %s was taken with 2 records:\n%s", tt.file, logs)
			}
		})
	}
}

func TestWatchRejectsBrokenFile(t *testing.T) {
	tests := []struct {
		name, file, content, reason string
	}{
		{"bad qty", "deliveries.csv", "type,item,qty\ndelivery,Switch,1\ndelivery,Router,three\n",
			`deliveries.csv line 3: qty: "three" is not a whole number`},
		{"cut short", "batch.json", `[{"type": "delivery", "item": "Sw`,
			`batch.json record 1, line 1: the file ends in the middle of its JSON; it may be cut short`},
		{"empty", "empty.json", "", "empty.json: is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ing := &fakeIngester{}
			startWatch(t, dir, ing, Options{})
			writeFile(t, filepath.Join(dir, tt.file), tt.content)

			rejected := filepath.Join(dir, RejectedDir, tt.file)
			waitFor(t, tt.file+" in rejected", func() bool { return present(t, rejected) })
			if got, want := readFile(t, rejected+".reason"), tt.reason+"\n"; got != want {
				t.Errorf("reason = %q, want %q", got, want)
			}
			if got := readFile(t, rejected); got != tt.content {
				t.Errorf("rejected file holds %q, want %q", got, tt.content)
			}
			if calls := ing.Calls(); len(calls) != 0 {
				t.Errorf("Ingest called %d times, want never", len(calls))
			}
			if present(t, filepath.Join(dir, tt.file)) {
				t.Errorf("%s is still in the inbox", tt.file)
			}
		})
	}
}

// TestWatchSlowWriter writes a record file in chunks, each sooner after the
// last than the settle time: the file is taken once, complete.
func TestWatchSlowWriter(t *testing.T) {
	dir := t.TempDir()
	ing := &fakeIngester{}
	startWatch(t, dir, ing, Options{})

	var content strings.Builder
	content.WriteString("type,item,qty\n")
	for i := range 40 {
		content.WriteString("delivery,Item ")
		content.WriteString(strings.Repeat("x", i))
		content.WriteString(",1\n")
	}
	data := []byte(content.String())
	f, err := os.Create(filepath.Join(dir, "slow.csv"))
	if err != nil {
		t.Fatal(err)
	}
	const chunks = 12
	start := time.Now()
	for i := range chunks {
		if _, err := f.Write(data[i*len(data)/chunks : (i+1)*len(data)/chunks]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(testSettle / 6) // the writer is slow, not done
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) < testSettle {
		t.Fatalf("the writer took %v, want longer than the settle time %v", time.Since(start), testSettle)
	}

	waitFor(t, "slow.csv in done", func() bool { return present(t, filepath.Join(dir, DoneDir, "slow.csv")) })
	calls := ing.Calls()
	if len(calls) != 1 {
		t.Fatalf("Ingest called %d times, want 1", len(calls))
	}
	if calls[0].content != content.String() {
		t.Errorf("Ingest saw %d bytes, want all %d", len(calls[0].content), len(data))
	}
	if len(calls[0].entries) != 40 {
		t.Errorf("Ingest got %d entries, want 40", len(calls[0].entries))
	}
	if got := names(t, filepath.Join(dir, RejectedDir)); len(got) != 0 {
		t.Errorf("rejected holds %v", got)
	}
}

func TestWatchAttachment(t *testing.T) {
	const record = `{"type": "delivery", "item": "Server", "qty": 1, "attach": ["Waybill 0412.pdf", "photo.jpg"]}`
	tests := []struct {
		name         string
		recordFirst  bool
		attachedName string // as on disk
	}{
		{"attachment first", false, "Waybill 0412.pdf"},
		{"record file first", true, "Waybill 0412.pdf"},
		{"name differs in case", true, "waybill 0412.PDF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ing := &fakeIngester{}
			logs := startWatch(t, dir, ing, Options{})
			writeAttachments := func() {
				writeFile(t, filepath.Join(dir, tt.attachedName), "%PDF waybill")
				writeFile(t, filepath.Join(dir, "photo.jpg"), "JPEG")
			}
			if tt.recordFirst {
				writeFile(t, filepath.Join(dir, "server.json"), record)
				waitFor(t, "the record file to wait", func() bool {
					return strings.Contains(logs.String(), "waits for its attachments")
				})
				writeAttachments()
			} else {
				writeAttachments()
				waitFor(t, "the attachments to wait", func() bool {
					return strings.Count(logs.String(), "waits for a record file") == 2
				})
				writeFile(t, filepath.Join(dir, "server.json"), record)
			}

			// The attachments move to done together with the record file.
			want := []string{"photo.jpg", "server.json", tt.attachedName}
			slices.Sort(want)
			waitFor(t, "the files in done", func() bool { return reflect.DeepEqual(names(t, filepath.Join(dir, DoneDir)), want) })
			calls := ing.Calls()
			if len(calls) != 1 {
				t.Fatalf("Ingest called %d times, want 1", len(calls))
			}
			wantPaths := map[string]string{
				"Waybill 0412.pdf": filepath.Join(dir, tt.attachedName),
				"photo.jpg":        filepath.Join(dir, "photo.jpg"),
			}
			if !reflect.DeepEqual(calls[0].attachments, wantPaths) {
				t.Errorf("Ingest attachments = %v, want %v", calls[0].attachments, wantPaths)
			}
			wantContent := map[string]string{"Waybill 0412.pdf": "%PDF waybill", "photo.jpg": "JPEG"}
			if !reflect.DeepEqual(calls[0].attached, wantContent) {
				t.Errorf("Ingest read attachments %v, want %v", calls[0].attached, wantContent)
			}
			if got := names(t, dir); !reflect.DeepEqual(got, []string{DoneDir, RejectedDir}) {
				t.Errorf("inbox holds %v, want only done and rejected", got)
			}
		})
	}
}

func TestWatchAttachmentNeverArrives(t *testing.T) {
	dir := t.TempDir()
	ing := &fakeIngester{}
	startWatch(t, dir, ing, Options{AttachWait: 500 * time.Millisecond})
	writeFile(t, filepath.Join(dir, "photo.jpg"), "JPEG")
	writeFile(t, filepath.Join(dir, "server.json"), `{"type": "delivery", "item": "Server", "qty": 1, "attach": ["photo.jpg", "waybill.pdf"]}`)

	rejected := filepath.Join(dir, RejectedDir, "server.json")
	waitFor(t, "server.json in rejected", func() bool { return present(t, rejected) })
	want := `attachment "waybill.pdf" never arrived (waited 500ms); drop it into the inbox, then this file again` + "\n"
	if got := readFile(t, rejected+".reason"); got != want {
		t.Errorf("reason = %q, want %q", got, want)
	}
	if calls := ing.Calls(); len(calls) != 0 {
		t.Errorf("Ingest called %d times, want never", len(calls))
	}
	// The attachment that did arrive waits for a corrected record file.
	if !present(t, filepath.Join(dir, "photo.jpg")) {
		t.Errorf("photo.jpg left the inbox")
	}
}

func TestWatchOrphanAttachment(t *testing.T) {
	dir := t.TempDir()
	startWatch(t, dir, &fakeIngester{}, Options{OrphanAfter: time.Second})
	writeFile(t, filepath.Join(dir, "photo.jpg"), "JPEG")

	rejected := filepath.Join(dir, RejectedDir, "photo.jpg")
	waitFor(t, "photo.jpg in rejected", func() bool { return present(t, rejected) })
	want := "no record file named this attachment within 1s; drop it again with a record file that names it in attach\n"
	if got := readFile(t, rejected+".reason"); got != want {
		t.Errorf("reason = %q, want %q", got, want)
	}
	if got := readFile(t, rejected); got != "JPEG" {
		t.Errorf("rejected/photo.jpg holds %q", got)
	}
}

// TestWatchExistingFiles starts the watcher on an inbox that already holds
// files, and a done folder that already holds one of their names.
func TestWatchExistingFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, DoneDir), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, DoneDir, "batch.json"), "earlier")
	writeFile(t, filepath.Join(dir, "batch.json"), goodJSON)
	writeFile(t, filepath.Join(dir, "deliveries.csv"), goodCSV)

	ing := &fakeIngester{}
	startWatch(t, dir, ing, Options{})
	waitFor(t, "both files taken", func() bool {
		return present(t, filepath.Join(dir, DoneDir, "batch-1.json")) && present(t, filepath.Join(dir, DoneDir, "deliveries.csv"))
	})
	if got := readFile(t, filepath.Join(dir, DoneDir, "batch.json")); got != "earlier" {
		t.Errorf("done/batch.json was overwritten: %q", got)
	}
	if got := readFile(t, filepath.Join(dir, DoneDir, "batch-1.json")); got != goodJSON {
		t.Errorf("done/batch-1.json holds %q", got)
	}
	if n := len(ing.Calls()); n != 2 {
		t.Errorf("Ingest called %d times, want 2", n)
	}
}

func TestWatchIngestError(t *testing.T) {
	dir := t.TempDir()
	ing := &fakeIngester{err: errors.New("record 2: pledge \"P-9\" is not known\n(agent pledges lists them)")}
	startWatch(t, dir, ing, Options{})
	writeFile(t, filepath.Join(dir, "photo.jpg"), "JPEG")
	content := `[{"type": "delivery", "item": "X", "qty": 1, "attach": "photo.jpg"}, {"type": "delivery", "item": "Y", "qty": 1, "pledge": "P-9"}]`
	// A rejected file of the same name from earlier stays as it is.
	if err := os.MkdirAll(filepath.Join(dir, RejectedDir), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, RejectedDir, "batch.json.reason"), "earlier\n")
	writeFile(t, filepath.Join(dir, "batch.json"), content)

	rejected := filepath.Join(dir, RejectedDir, "batch-1.json")
	waitFor(t, "batch.json in rejected", func() bool { return present(t, rejected) })
	if got, want := readFile(t, rejected+".reason"), `record 2: pledge "P-9" is not known (agent pledges lists them)`+"\n"; got != want {
		t.Errorf("reason = %q, want %q", got, want)
	}
	if got := readFile(t, filepath.Join(dir, RejectedDir, "batch.json.reason")); got != "earlier\n" {
		t.Errorf("earlier reason was overwritten: %q", got)
	}
	if got := readFile(t, rejected); got != content {
		t.Errorf("rejected file holds %q", got)
	}
	if n := len(ing.Calls()); n != 1 {
		t.Errorf("Ingest called %d times, want 1", n)
	}
	// The attachment stays for a corrected record file.
	if !present(t, filepath.Join(dir, "photo.jpg")) {
		t.Errorf("photo.jpg left the inbox")
	}
}

// TestWatchIgnores drops files the watcher must leave alone, then a record
// file; once that is taken, the others are still where they were.
func TestWatchIgnores(t *testing.T) {
	dir := t.TempDir()
	startWatch(t, dir, &fakeIngester{}, Options{OrphanAfter: 50 * time.Millisecond})
	ignoredNames := []string{".hidden.json", "batch.json.part", "x.tmp", "notes.csv~", "scan.pdf.crdownload", "~$sheet.xlsx", "Thumbs.db"}
	for _, n := range ignoredNames {
		writeFile(t, filepath.Join(dir, n), "partial")
	}
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "sub", "inner.json"), "{")
	writeFile(t, filepath.Join(dir, "batch.json"), goodJSON)

	waitFor(t, "batch.json in done", func() bool { return present(t, filepath.Join(dir, DoneDir, "batch.json")) })
	for _, n := range append(ignoredNames, filepath.Join("sub", "inner.json")) {
		if !present(t, filepath.Join(dir, n)) {
			t.Errorf("%s was moved", n)
		}
	}
	if got := names(t, filepath.Join(dir, RejectedDir)); len(got) != 0 {
		t.Errorf("rejected holds %v", got)
	}
}

// TestWatchRejectsLink rejects a symbolic link rather than attach what it
// points to.
func TestWatchRejectsLink(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("symbolic links need privileges on Windows")
	}
	dir := t.TempDir()
	secret := filepath.Join(t.TempDir(), "secret")
	writeFile(t, secret, "key")
	if err := os.Symlink(secret, filepath.Join(dir, "scan.pdf")); err != nil {
		t.Fatal(err)
	}
	ing := &fakeIngester{}
	startWatch(t, dir, ing, Options{})
	writeFile(t, filepath.Join(dir, "d.json"), `{"type": "delivery", "item": "X", "qty": 1, "attach": "scan.pdf"}`)

	rejected := filepath.Join(dir, RejectedDir, "scan.pdf")
	waitFor(t, "scan.pdf in rejected", func() bool { return present(t, rejected) })
	want := "is not a regular file (a link, device or pipe); copy the file itself into the inbox\n"
	if got := readFile(t, rejected+".reason"); got != want {
		t.Errorf("reason = %q, want %q", got, want)
	}
	if n := len(ing.Calls()); n != 0 {
		t.Errorf("Ingest called %d times, want never", n)
	}
	if got := readFile(t, secret); got != "key" {
		t.Errorf("link target changed: %q", got)
	}
}

// TestWatchRenameIntoPlace writes a record file under a temporary name and
// renames it, as careful tools do.
func TestWatchRenameIntoPlace(t *testing.T) {
	dir := t.TempDir()
	ing := &fakeIngester{}
	startWatch(t, dir, ing, Options{})
	tmp := filepath.Join(dir, ".batch.json.tmp")
	writeFile(t, tmp, goodJSON)
	if err := os.Rename(tmp, filepath.Join(dir, "batch.json")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "batch.json in done", func() bool { return present(t, filepath.Join(dir, DoneDir, "batch.json")) })
	if n := len(ing.Calls()); n != 1 {
		t.Errorf("Ingest called %d times, want 1", n)
	}
}

// TestWatchStopDuringIngest stops the watcher while Ingest runs: the file is
// neither rejected nor moved, and is offered again at the next start.
func TestWatchStopDuringIngest(t *testing.T) {
	dir := t.TempDir()
	ing := &fakeIngester{block: true}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, dir, ing, Options{Settle: testSettle}) }()
	waitFor(t, "inbox folders", func() bool { return present(t, filepath.Join(dir, RejectedDir)) })
	writeFile(t, filepath.Join(dir, "batch.json"), goodJSON)
	waitFor(t, "Ingest to be called", func() bool { return len(ing.Calls()) == 1 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Watch: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not return after its context ended") // leaks the goroutine; the test fails anyway
	}
	if !present(t, filepath.Join(dir, "batch.json")) {
		t.Errorf("batch.json left the inbox")
	}
	if got := names(t, filepath.Join(dir, RejectedDir)); len(got) != 0 {
		t.Errorf("rejected holds %v", got)
	}

	ing2 := &fakeIngester{}
	startWatch(t, dir, ing2, Options{})
	waitFor(t, "batch.json in done", func() bool { return present(t, filepath.Join(dir, DoneDir, "batch.json")) })
}

func TestFormatDuration(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{
		{24 * time.Hour, "24h"},
		{10 * time.Minute, "10m"},
		{90 * time.Second, "1m30s"},
		{time.Hour + 30*time.Second, "1h0m30s"},
		{2*time.Hour + 30*time.Minute, "2h30m"},
		{300 * time.Millisecond, "300ms"},
	} {
		if got := formatDuration(tt.d); got != tt.want {
			t.Errorf("formatDuration(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}
