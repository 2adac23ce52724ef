package wal

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// DefaultSegmentSize is the segment size used when Options.SegmentSize is
// zero: big enough that rolling is rare, small enough that Compact frees
// space soon after a snapshot.
const DefaultSegmentSize = 64 << 20

// writeBufferSize batches the small frames of a group commit into few
// write calls; larger payloads bypass it.
const writeBufferSize = 256 << 10

// ErrClosed is returned by the methods of a Log after Close.
var ErrClosed = errors.New("wal: log is closed")

// ErrCompacted is returned by Replay when it is asked for entries that
// Compact already removed.
var ErrCompacted = errors.New("wal: entries were compacted away")

// Options tune a Log. The zero value is ready for production use.
type Options struct {
	// SegmentSize is the size in bytes after which the log rolls to a new
	// segment file (DefaultSegmentSize if zero or negative). A segment ends
	// before the entry that would take it past this size, unless it holds
	// no entry yet, so one large entry still fits.
	SegmentSize int64
	// NoSync skips every fsync. For tests and benchmarks only: with it, an
	// acknowledged entry can be lost on power failure.
	NoSync bool
	// Logger receives warnings about recovery; nil discards them.
	Logger *slog.Logger
}

// RecoveryInfo describes what Open found on disk.
type RecoveryInfo struct {
	Segments   int    // segment files read
	Entries    uint64 // intact entries found in them
	FirstIndex uint64 // index of the first entry (LastIndex+1 if there is none)
	LastIndex  uint64 // index of the last intact entry

	// TornBytes is the number of bytes truncated from the end of the last
	// segment because a crash left an incomplete append there; 0 if the log
	// ended cleanly. No entry that Append acknowledged is ever among them.
	TornBytes  int64
	TornPath   string // the truncated segment
	TornOffset int64  // where it was cut
	TornReason string // what was found at TornOffset
}

// Log is an open write-ahead log. Its methods are safe for concurrent use.
type Log struct {
	dir       string // the data directory given to Open
	logDir    string // dir/log
	opts      Options
	lg        *slog.Logger
	recovered RecoveryInfo

	// rmu keeps Compact from deleting segment files while Replay reads them
	// (Windows cannot delete an open file, and Replay must not see half a log).
	rmu sync.RWMutex

	// wmu is held by whoever writes to the active segment: the commit
	// leader, Compact when it rolls the segment, and Close.
	wmu         sync.Mutex
	active      *os.File      // the newest segment, open for appending
	bw          *bufio.Writer // buffers frames on their way to active
	activeFirst uint64        // index of the first entry active holds or will hold
	activeSize  int64         // bytes in active, including buffered ones
	written     uint64        // index of the last entry written to active
	unsynced    int           // entries written since the last fsync

	// mu guards the rest, and is held only briefly, never during I/O.
	mu       sync.Mutex
	idle     sync.Cond // broadcast when writing becomes false
	segments []segment // all segments, oldest first; the last is active
	next     uint64    // index the next queued entry gets
	last     uint64    // index of the last durable entry
	queue    []*commit // commits waiting for the next leader
	writing  bool      // a leader is writing, or the lead is being handed over
	failed   error     // set when a write or fsync failed: the log refuses more
	closed   bool

	// commitHook, if set, is called by the commit leader just before each
	// fsync of appended entries (also under NoSync), with the number of
	// entries it makes durable. Tests use it to count and pace fsyncs.
	commitHook func(entries int)
}

// Open opens or creates the log in dir, creating dir (mode 0700) if needed,
// and recovers it.
//
// A torn tail, that is a partial or checksum-bad entry at the very end of
// the last segment or a zero-filled tail, is what a crash during an append
// leaves; Open truncates it away and reports it through Recovered. Any other
// damage (a bad entry followed by an intact one, a bad entry in a segment
// that is not the last, a gap in the indexes) makes Open fail with a
// *CorruptError naming the file and byte offset; Open then changes nothing
// on disk.
//
// Open reads every segment to verify it, so its cost grows with the log;
// Compact after each snapshot keeps that bounded.
func Open(dir string, opts Options) (*Log, error) {
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = DefaultSegmentSize
	}
	lg := opts.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	l := &Log{dir: dir, logDir: filepath.Join(dir, logDirName), opts: opts, lg: lg}
	l.idle.L = &l.mu
	if err := os.MkdirAll(l.logDir, 0o700); err != nil {
		return nil, fmt.Errorf("wal: create log directory: %w", err)
	}
	files, err := listIndexed(l.logDir, segmentExt)
	if err != nil {
		return nil, fmt.Errorf("wal: list segments: %w", err)
	}
	snaps, err := listIndexed(filepath.Join(dir, snapDirName), snapExt)
	if err != nil {
		return nil, fmt.Errorf("wal: list snapshots: %w", err)
	}
	var snapIndex uint64 // the newest snapshot's index: the log must reach it
	if len(snaps) > 0 {
		snapIndex = snaps[len(snaps)-1].index
	}

	if len(files) == 0 {
		// A new log, or one an operator moved aside: start after the newest
		// snapshot so that indexes never repeat one it already covers.
		if err := l.create(snapIndex + 1); err != nil {
			return nil, err
		}
		l.recovered = RecoveryInfo{FirstIndex: snapIndex + 1, LastIndex: snapIndex}
		return l, nil
	}

	// Verify everything before changing anything, so that a log Open
	// refuses is left exactly as it was found.
	var scan segmentScan
	var info RecoveryInfo
	for i, f := range files {
		seg := segment{first: f.index, path: f.path}
		if seg.first == 0 {
			return nil, &CorruptError{Path: seg.path, Reason: "segment is named for index 0, which no entry has", Dir: dir}
		}
		if i > 0 {
			prev := l.segments[i-1]
			switch end := prev.first + scan.entries; {
			case seg.first > end:
				return nil, &CorruptError{Path: seg.path, Reason: fmt.Sprintf(
					"segment starts at entry %d but the previous one ends at entry %d: %s",
					seg.first, end-1, missing(end, seg.first-1)), Dir: dir}
			case seg.first < end:
				return nil, &CorruptError{Path: seg.path, Reason: fmt.Sprintf(
					"segment starts at entry %d but the previous one already holds entries up to %d",
					seg.first, end-1), Dir: dir}
			}
		}
		if scan, err = scanSegment(dir, seg, i == len(files)-1); err != nil {
			return nil, err
		}
		l.segments = append(l.segments, seg)
		info.Entries += scan.entries
	}
	tail := l.segments[len(l.segments)-1]
	l.last = tail.first + scan.entries - 1
	if l.last < snapIndex {
		return nil, &CorruptError{Path: tail.path, Offset: scan.end, Reason: fmt.Sprintf(
			"the log ends at entry %d but snapshot %s covers entries up to %d",
			l.last, filepath.Base(snaps[len(snaps)-1].path), snapIndex), Dir: dir}
	}
	info.Segments = len(files)
	info.FirstIndex = l.segments[0].first
	info.LastIndex = l.last

	if err := l.openActive(tail, scan); err != nil {
		return nil, err
	}
	if scan.torn || scan.headerTorn {
		info.TornBytes = scan.size - scan.end
		info.TornPath, info.TornOffset, info.TornReason = tail.path, scan.end, scan.reason
		lg.Warn("wal: truncated the torn tail of an append interrupted by a crash",
			"path", tail.path, "offset", scan.end, "bytes", info.TornBytes, "reason", scan.reason)
	}
	l.recovered = info
	return l, nil
}

// openActive opens the newest segment for appending, first cutting off the
// torn tail that scan found, if any.
func (l *Log) openActive(seg segment, scan segmentScan) error {
	f, err := os.OpenFile(seg.path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("wal: %w", err)
	}
	err = func() error {
		switch {
		case scan.headerTorn:
			if err := f.Truncate(0); err != nil {
				return err
			}
			if _, err := f.WriteAt(fileHeader(segmentMagic, seg.first), 0); err != nil {
				return err
			}
			scan.end = fileHeaderSize
		case scan.torn:
			if err := f.Truncate(scan.end); err != nil {
				return err
			}
		default:
			return nil
		}
		return l.fsync(f)
	}()
	if err != nil {
		f.Close()
		return fmt.Errorf("wal: repair torn tail of %s: %w", seg.path, err)
	}
	if _, err := f.Seek(scan.end, io.SeekStart); err != nil {
		f.Close()
		return fmt.Errorf("wal: %w", err)
	}
	l.active = f
	l.bw = bufio.NewWriterSize(f, writeBufferSize)
	l.activeFirst = seg.first
	l.activeSize = scan.end
	l.written = l.last
	l.next = l.last + 1
	return nil
}

// create starts a log whose first entry will have index first.
func (l *Log) create(first uint64) error {
	f, path, err := l.newSegment(first)
	if err != nil {
		return err
	}
	l.segments = []segment{{first: first, path: path}}
	l.active = f
	l.bw = bufio.NewWriterSize(f, writeBufferSize)
	l.activeFirst = first
	l.activeSize = fileHeaderSize
	l.last = first - 1
	l.written = l.last
	l.next = first
	return nil
}

// newSegment creates the segment file for entries from first on and makes
// it durable, header and directory entry, before any entry goes into it;
// recovery relies on that to tell a torn header from a damaged one.
func (l *Log) newSegment(first uint64) (*os.File, string, error) {
	path := filepath.Join(l.logDir, indexName(first, segmentExt))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, "", fmt.Errorf("wal: create segment: %w", err)
	}
	if _, err := f.Write(fileHeader(segmentMagic, first)); err != nil {
		f.Close()
		return nil, "", fmt.Errorf("wal: write segment header %s: %w", path, err)
	}
	if err := l.fsync(f); err != nil {
		f.Close()
		return nil, "", fmt.Errorf("wal: sync %s: %w", path, err)
	}
	if !l.opts.NoSync {
		if err := syncDir(l.logDir); err != nil {
			f.Close()
			return nil, "", fmt.Errorf("wal: %w", err)
		}
	}
	return f, path, nil
}

func (l *Log) fsync(f *os.File) error {
	if l.opts.NoSync {
		return nil
	}
	return f.Sync()
}

// Recovered reports what Open found on disk.
func (l *Log) Recovered() RecoveryInfo { return l.recovered }

// FirstIndex returns the index of the oldest entry in the log, or
// LastIndex()+1 when the log holds none (new, or compacted to its end).
func (l *Log) FirstIndex() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.segments[0].first
}

// LastIndex returns the index of the newest durable entry, or
// FirstIndex()-1 when the log holds none.
func (l *Log) LastIndex() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// commit is one Append or AppendBatch call waiting to be made durable.
type commit struct {
	entries [][]byte
	first   uint64 // index of entries[0]

	// Set by the leader that wrote the commit, under mu.
	done bool
	err  error

	// wake is signalled once, under mu: either done is set, or this commit
	// is first in the queue and its caller must lead the next write.
	wake chan struct{}
}

// Append writes data as the next entry and returns its index once the entry
// is durable on disk. Indexes start at 1 and are consecutive.
//
// Concurrent calls commit in groups: while one caller writes and fsyncs,
// the others queue, and the first of them then writes the whole queue with
// a single fsync. A lone caller writes at once, without waiting for company.
//
// After a write or fsync fails, the state of the file is unknown, so every
// later call fails too: reopen the log to recover from what is on disk.
func (l *Log) Append(data []byte) (index uint64, err error) {
	return l.commit([][]byte{data})
}

// AppendBatch writes the entries of data with consecutive indexes and one
// fsync, and returns the index of the first once all are durable. It is
// all-or-nothing as far as the caller can tell: on error, none of them is
// acknowledged (a later Open may still find some of them). An empty batch
// writes nothing and returns 0.
func (l *Log) AppendBatch(data [][]byte) (first uint64, err error) {
	if len(data) == 0 {
		return 0, nil
	}
	return l.commit(data)
}

// commit queues entries and waits until a leader made them durable, leading
// the write itself if no one else is.
func (l *Log) commit(entries [][]byte) (uint64, error) {
	for _, e := range entries {
		if len(e) > MaxEntrySize {
			return 0, fmt.Errorf("%w: entry of %d bytes, limit %d", ErrEntryTooLarge, len(e), MaxEntrySize)
		}
	}
	c := &commit{entries: entries, wake: make(chan struct{}, 1)}

	l.mu.Lock()
	if err := l.usableLocked(); err != nil {
		l.mu.Unlock()
		return 0, err
	}
	// Indexes are handed out in queue order, which is write order.
	c.first = l.next
	l.next += uint64(len(entries))
	l.queue = append(l.queue, c)
	if l.writing {
		l.mu.Unlock()
		<-c.wake
		l.mu.Lock()
		if c.done {
			l.mu.Unlock()
			return c.result()
		}
		// The previous leader handed us the lead; c is still queued.
	}
	l.writing = true
	batch := l.queue
	l.queue = nil
	l.mu.Unlock()

	l.lead(batch)
	return c.result()
}

func (c *commit) result() (uint64, error) {
	if c.err != nil {
		return 0, c.err
	}
	return c.first, nil
}

// lead writes batch as the commit leader, completes its commits, and hands
// the lead to the first commit that queued meanwhile.
func (l *Log) lead(batch []*commit) {
	l.wmu.Lock()
	defer l.wmu.Unlock()

	l.mu.Lock()
	err := l.failed
	l.mu.Unlock()
	if err == nil {
		if err = l.writeBatch(batch); err != nil {
			err = fmt.Errorf("wal: append failed; reopen the log to recover: %w", err)
		}
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if l.failed == nil {
			l.failed = err
		}
	} else {
		l.last = l.written
	}
	for _, c := range batch {
		c.done, c.err = true, err
		c.wake <- struct{}{}
	}
	if len(l.queue) > 0 {
		// writing stays true: the lead passes straight to the next caller,
		// so no newcomer can start a write that overtakes the queue.
		l.queue[0].wake <- struct{}{}
		return
	}
	l.writing = false
	l.idle.Broadcast()
}

// writeBatch writes and fsyncs the entries of batch, rolling to a new
// segment whenever the active one is full. It runs under wmu.
func (l *Log) writeBatch(batch []*commit) error {
	index := batch[0].first
	if index != l.written+1 {
		return fmt.Errorf("internal error: next entry is %d but %d was written last", index, l.written)
	}
	for _, c := range batch {
		for _, data := range c.entries {
			size := frameHeaderSize + int64(len(data))
			if l.written >= l.activeFirst && l.activeSize+size > l.opts.SegmentSize {
				if err := l.roll(index); err != nil {
					return err
				}
			}
			if err := writeFrame(l.bw, index, data); err != nil {
				return err
			}
			l.activeSize += size
			l.written = index
			l.unsynced++
			index++
		}
	}
	return l.syncActive()
}

// syncActive makes everything written to the active segment durable.
func (l *Log) syncActive() error {
	if err := l.bw.Flush(); err != nil {
		return err
	}
	if l.unsynced == 0 {
		return nil
	}
	if l.commitHook != nil {
		l.commitHook(l.unsynced)
	}
	if err := l.fsync(l.active); err != nil {
		return err
	}
	l.unsynced = 0
	return nil
}

// roll closes the active segment and starts a new one at first. The old
// segment is fsynced before the new one exists, which is why recovery may
// treat any damage outside the last segment as corruption. It runs under
// wmu.
func (l *Log) roll(first uint64) error {
	if err := l.syncActive(); err != nil {
		return err
	}
	if err := l.active.Close(); err != nil {
		return err
	}
	l.active = nil
	f, path, err := l.newSegment(first)
	if err != nil {
		return err
	}
	l.active = f
	l.bw.Reset(f)
	l.activeFirst = first
	l.activeSize = fileHeaderSize

	l.mu.Lock()
	l.segments = append(l.segments, segment{first: first, path: path})
	l.mu.Unlock()
	return nil
}

// usableLocked returns why the log cannot be used, if it cannot.
func (l *Log) usableLocked() error {
	if l.closed {
		return ErrClosed
	}
	return l.failed
}

// Replay calls fn for every entry with an index of at least from, in index
// order, up to the last entry that was durable when Replay began. It reads
// the segment files sequentially through a small buffer, never a whole file
// at once. fn may keep data. fn must not call Compact or Close.
//
// A from of 0 or 1 means the whole log. If entries at or after from were
// already removed by Compact, Replay returns an error wrapping ErrCompacted
// without calling fn. If fn returns an error, Replay stops and returns it
// unchanged.
func (l *Log) Replay(from uint64, fn func(index uint64, data []byte) error) error {
	l.rmu.RLock()
	defer l.rmu.RUnlock()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	segs := slices.Clone(l.segments)
	last := l.last
	l.mu.Unlock()

	from = max(from, 1)
	if first := segs[0].first; from < first {
		return fmt.Errorf("wal: replay from entry %d: the log starts at entry %d: %w", from, first, ErrCompacted)
	}
	for i, seg := range segs {
		end := last
		if i+1 < len(segs) {
			end = min(end, segs[i+1].first-1)
		}
		if end < from || end < seg.first {
			continue
		}
		if err := l.replaySegment(seg, from, end, fn); err != nil {
			return err
		}
	}
	return nil
}

// replaySegment calls fn for the entries from..end of seg.
func (l *Log) replaySegment(seg segment, from, end uint64, fn func(uint64, []byte) error) error {
	f, err := os.Open(seg.path)
	if err != nil {
		return fmt.Errorf("wal: replay: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("wal: replay: %w", err)
	}
	corrupt := func(off int64, format string, args ...any) error {
		return &CorruptError{Path: seg.path, Offset: off, Reason: fmt.Sprintf(format, args...), Dir: l.dir}
	}
	// Open verified all of this, so damage here means the file changed
	// under a running log.
	br := bufio.NewReaderSize(f, readBufferSize)
	hdr := make([]byte, fileHeaderSize)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return corrupt(0, "segment header unreadable: %v", err)
	}
	if first, err := parseFileHeader(hdr, segmentMagic); err != nil || first != seg.first {
		return corrupt(0, "segment header changed since the log was opened")
	}
	fr := frameReader{r: br, off: fileHeaderSize, size: st.Size()}
	var skip []byte // entries before from are read into one reused buffer
	for want := seg.first; want <= end; want++ {
		off := fr.off
		buf := skip
		if want >= from {
			buf = nil // fn may keep what it is given
		}
		index, data, err := fr.next(buf)
		if err == io.EOF {
			return corrupt(off, "segment ends before entry %d", want)
		}
		var damage *frameDamage
		if errors.As(err, &damage) {
			return corrupt(off, "%s", damage.reason)
		}
		if err != nil {
			return fmt.Errorf("wal: replay %s: %w", seg.path, err)
		}
		if index != want {
			return corrupt(off, "found entry %d where entry %d belongs", index, want)
		}
		if want < from {
			skip = data
			continue
		}
		if err := fn(index, data); err != nil {
			return err
		}
	}
	return nil
}

// Compact removes the segments whose entries all have an index of at most
// upTo, after a snapshot made them unnecessary. If the active segment is
// among them, the log first rolls to a new one, so that compacting to the
// end of the log frees all the space. Compact never removes an entry after
// upTo; segments are removed oldest first, so an interruption leaves no gap.
// upTo may not exceed LastIndex.
func (l *Log) Compact(upTo uint64) error {
	l.rmu.Lock()
	defer l.rmu.Unlock()

	l.wmu.Lock()
	l.mu.Lock()
	err := l.usableLocked()
	last := l.last
	l.mu.Unlock()
	if err == nil && upTo > last {
		err = fmt.Errorf("wal: compact up to entry %d: the log ends at entry %d", upTo, last)
	}
	if err == nil && l.written >= l.activeFirst && l.written <= upTo {
		if err = l.roll(l.written + 1); err != nil {
			err = fmt.Errorf("wal: roll %s for compaction failed; reopen the log to recover: %w", l.logDir, err)
			l.mu.Lock()
			l.failed = err
			l.mu.Unlock()
		}
	}
	l.mu.Lock()
	segs := slices.Clone(l.segments)
	l.mu.Unlock()
	l.wmu.Unlock()
	if err != nil {
		return err
	}

	removed := 0
	for i := 0; i+1 < len(segs) && segs[i+1].first <= upTo+1; i++ {
		if err = os.Remove(segs[i].path); err != nil {
			err = fmt.Errorf("wal: compact: %w", err)
			break
		}
		removed++
	}
	if removed == 0 {
		return err
	}
	l.mu.Lock()
	l.segments = l.segments[removed:]
	l.mu.Unlock()
	l.lg.Debug("wal: compacted", "up_to", upTo, "segments_removed", removed, "first_index", segs[removed].first)
	if !l.opts.NoSync {
		if serr := syncDir(l.logDir); serr != nil && err == nil {
			err = fmt.Errorf("wal: compact: %w", serr)
		}
	}
	return err
}

// Close waits for commits in progress, then closes the log. Later calls of
// any method return ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.closed = true
	for l.writing {
		l.idle.Wait()
	}
	l.mu.Unlock()

	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.active == nil {
		return nil
	}
	err := l.active.Close()
	l.active = nil
	if err != nil {
		return fmt.Errorf("wal: close: %w", err)
	}
	return nil
}
