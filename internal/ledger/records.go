package ledger

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"iter"
	"slices"
	"sort"
	"sync"

	"github.com/hashicorp/go-memdb"
	"github.com/klauspost/compress/zstd"

	"fieldsync/protocol"
)

// Records live outside memdb, in a recordStore. They are the one table
// that grows to millions of rows (a busy hub), and memdb keeps every index
// key as a radix tree leaf and node with two watch channels: about 440
// bytes a key, four or five keys a record, on top of a 416-byte Go struct.
// A million records took 3 GB and 9 s to load that way. The store keeps
// each record as the JSON it was logged as, in zstd-compressed blocks, and
// indexes it with hashes and ordinals in flat slices and maps the garbage
// collector has no pointers to follow in: about 160 bytes a record at a
// hub, 130 at an agent (docs/benchmarks.md has the breakdown).
//
// Records are append-only (corrections are records of their own), so a
// state of the store is its number of records: ordinals below it. memdb's
// records table holds one row, recordsRow, that says how many records its
// state has. A memdb snapshot or transaction therefore sees exactly the
// records of its state (RecordsOf), a watch on that row fires when records
// are added, and undoing a Write restores the row like any other.

const (
	// recordBlockSize is the size of uncompressed JSON after which the
	// block being filled is compressed. Larger blocks compress better and
	// cost more to read one record from.
	recordBlockSize = 32 << 10
	// idChunkSize is the size of the chunks record ids are kept in.
	idChunkSize = 256 << 10
	// blockCacheBytes bounds the decompressed blocks kept for readers (a
	// record with thousands of serial numbers makes a block of a megabyte).
	blockCacheBytes = 4 << 20
	// scanPageBytes bounds the JSON of the records an iterator decodes at
	// a time, besides scanPage.
	scanPageBytes = 4 << 20
	// recordsRowKey is the key of the one row of the records table.
	recordsRowKey = "records"
)

// recordsRow is the one row of the records table: the records of the state
// it belongs to are the first n of store. During a Write the row is live:
// the state is every record of the store, so that the writer sees what it
// added without a change to memdb per record; the Write fixes n before the
// state is published.
type recordsRow struct {
	Key   string
	n     uint32
	live  bool
	store *recordStore
}

// errDuplicateRecord is returned for a record whose id, or whose (agent,
// sequence number), another record has.
var errDuplicateRecord = errors.New("duplicate record")

// slot says where one record is.
type slot struct {
	idChunk uint32
	idOff   uint32
	block   uint32 // index in blocks, or len(blocks) for the tail
	off     uint32 // offset of the JSON in the uncompressed block
	n       uint32 // length of the JSON
	idLen   uint8
}

// pledgeEntry is a record that names a pledge and what it adds to the
// pledge's totals as stored, so that summing a pledge decodes only the
// records that were corrected since (see PledgeTotals).
type pledgeEntry struct {
	ord  uint32
	adds Totals
}

// agentRecords are an agent's records in sequence order.
type agentRecords struct {
	seqs  []uint64
	ords  []uint32
	first uint32 // the lowest of ords: states before it have none of them
}

// search returns the position of the first record with a sequence number
// of at least seq.
func (a *agentRecords) search(seq uint64) int {
	i, _ := slices.BinarySearch(a.seqs, seq)
	return i
}

// recordStore holds the records of a ledger. One writer at a time appends
// (the ledger's write lock); readers see the records below their state's
// count, which the writer never changes.
type recordStore struct {
	role Role
	seed maphash.Seed
	enc  *zstd.Encoder
	dec  *zstd.Decoder

	mu     sync.RWMutex
	slots  []slot
	blocks [][]byte // compressed, full
	tail   []byte   // the block being filled, uncompressed; never reused once full
	ids    [][]byte // id chunks

	// Ids and serial numbers are indexed by a 32-bit hash: 4 bytes a key
	// in a map without pointers, where a string key would cost its own
	// allocation and the collector's time. A lookup checks the id or the
	// serial number it finds, so a collision costs a comparison, never a
	// wrong answer; the seed is random, so no one can aim for collisions.
	byID       map[uint32]uint32 // hash of an id → ordinal
	idMore     map[string]uint32 // ids whose hash another id had first
	agents     map[string]*agentRecords
	byPledge   map[string][]pledgeEntry // ordinals ascending, with what each adds
	byTarget   map[string][]uint32      // ordinals of corrections, ascending
	bySerial   map[uint32]uint32        // hash of a serial number → first ordinal; a hub's only
	serialMore map[uint32][]uint32      // the later ordinals of a hash in bySerial, ascending
	scratch    []byte                   // for compressing a block

	cache blockCache
}

func newRecordStore(role Role) *recordStore {
	// Neither fails with these options.
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(1<<20), zstd.WithLowerEncoderMem(true))
	dec, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderLowmem(true))
	return &recordStore{
		role: role, seed: maphash.MakeSeed(), enc: enc, dec: dec,
		byID: map[uint32]uint32{}, idMore: map[string]uint32{}, agents: map[string]*agentRecords{},
		byPledge: map[string][]pledgeEntry{}, byTarget: map[string][]uint32{},
		bySerial: map[uint32]uint32{}, serialMore: map[uint32][]uint32{},
		cache: blockCache{m: map[uint32][]byte{}},
	}
}

// storeMark is a state of the store to go back to when a Write fails.
type storeMark struct {
	records int
	blocks  int
	tail    int
	ids     int
	idLen   int // length of the last id chunk
}

func (s *recordStore) mark() storeMark {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m := storeMark{records: len(s.slots), blocks: len(s.blocks), tail: len(s.tail), ids: len(s.ids)}
	if len(s.ids) > 0 {
		m.idLen = len(s.ids[len(s.ids)-1])
	}
	return m
}

// count returns the number of records stored, published or not.
func (s *recordStore) count() uint32 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return uint32(len(s.slots))
}

// add appends r, whose JSON is raw, and returns the number of records
// after it. raw is copied.
func (s *recordStore) add(r *protocol.Record, raw []byte) (uint32, error) {
	if len(r.ID) == 0 || len(r.ID) > 255 {
		return 0, fmt.Errorf("record id of %d bytes", len(r.ID))
	}
	if uint64(len(s.slots)) >= 1<<32-1 || len(raw) >= 1<<31 {
		return 0, errors.New("record store is full")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.lookupLocked(r.ID, uint32(len(s.slots))); ok {
		return 0, fmt.Errorf("%w: id %s is stored already", errDuplicateRecord, r.ID)
	}
	ar := s.agents[r.Agent]
	if r.Agent != "" && ar != nil {
		if i := ar.search(r.Seq); i < len(ar.seqs) && ar.seqs[i] == r.Seq {
			return 0, fmt.Errorf("%w: agent %s sequence number %d is stored already", errDuplicateRecord, r.Agent, r.Seq)
		}
	}
	ord := uint32(len(s.slots))
	sl := slot{block: uint32(len(s.blocks)), off: uint32(len(s.tail)), n: uint32(len(raw)), idLen: uint8(len(r.ID))}
	s.tail = append(s.tail, raw...)
	if len(s.ids) == 0 || len(s.ids[len(s.ids)-1])+len(r.ID) > cap(s.ids[len(s.ids)-1]) {
		s.ids = append(s.ids, make([]byte, 0, idChunkSize))
	}
	c := &s.ids[len(s.ids)-1]
	sl.idChunk, sl.idOff = uint32(len(s.ids)-1), uint32(len(*c))
	*c = append(*c, r.ID...)
	s.slots = append(s.slots, sl)

	h := s.hash(r.ID)
	if _, taken := s.byID[h]; taken {
		s.idMore[r.ID] = ord
	} else {
		s.byID[h] = ord
	}
	if r.Agent != "" {
		if ar == nil {
			ar = &agentRecords{first: ord}
			s.agents[r.Agent] = ar
		}
		if n := len(ar.seqs); n == 0 || ar.seqs[n-1] < r.Seq {
			ar.seqs, ar.ords = append(ar.seqs, r.Seq), append(ar.ords, ord)
		} else {
			i := ar.search(r.Seq)
			ar.seqs, ar.ords = slices.Insert(ar.seqs, i, r.Seq), slices.Insert(ar.ords, i, ord)
		}
	}
	if r.Pledge != "" {
		s.byPledge[r.Pledge] = append(s.byPledge[r.Pledge], pledgeEntry{ord: ord, adds: recordTotals(r)})
	}
	if r.Target != "" {
		s.byTarget[r.Target] = append(s.byTarget[r.Target], ord)
	}
	if s.role == RoleHub {
		for _, sn := range uniqueSerials(r.Serials) {
			h := s.hash(sn)
			first, taken := s.bySerial[h]
			switch more := s.serialMore[h]; {
			case !taken:
				s.bySerial[h] = ord
			case first == ord || (len(more) > 0 && more[len(more)-1] == ord):
				// Two of the record's serial numbers share the hash.
			default:
				s.serialMore[h] = append(more, ord)
			}
		}
	}
	if len(s.tail) >= recordBlockSize {
		s.sealLocked()
	}
	return ord + 1, nil
}

// hash returns the index key of an id or a serial number.
func (s *recordStore) hash(v string) uint32 { return uint32(maphash.String(s.seed, v)) }

// uniqueSerials returns the non-empty serial numbers of a record, each
// once.
func uniqueSerials(serials []string) []string {
	if len(serials) > 8 {
		// Many: sorting beats comparing each with each (a record may
		// state thousands).
		out := slices.Clone(serials)
		slices.Sort(out)
		return slices.DeleteFunc(slices.Compact(out), func(sn string) bool { return sn == "" })
	}
	out := make([]string, 0, len(serials))
	for _, sn := range serials {
		if sn != "" && !slices.Contains(out, sn) {
			out = append(out, sn)
		}
	}
	return out
}

// sealLocked compresses the tail into a block. The tail's array is left to
// the readers that may hold it; the next tail is a new one.
func (s *recordStore) sealLocked() {
	s.scratch = s.enc.EncodeAll(s.tail, s.scratch[:0])
	s.blocks = append(s.blocks, bytes.Clone(s.scratch))
	s.tail = make([]byte, 0, recordBlockSize+recordBlockSize/4)
}

// restore takes the store back to m, undoing every add since.
func (s *recordStore) restore(m storeMark) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ord := len(s.slots) - 1; ord >= m.records; ord-- {
		r, err := s.recordLocked(uint32(ord))
		if err != nil {
			return fmt.Errorf("undo record %d: %w", ord, err)
		}
		s.unindexLocked(r, uint32(ord))
	}
	s.slots = s.slots[:m.records]
	if len(s.blocks) > m.blocks {
		// The Write filled the block that was the tail: make it the tail
		// again, in a new array (readers may hold the old one).
		tail, err := s.dec.DecodeAll(s.blocks[m.blocks], nil)
		if err != nil {
			return fmt.Errorf("undo records: decompress block %d: %w", m.blocks, err)
		}
		for i := m.blocks; i < len(s.blocks); i++ {
			// The next blocks sealed get these numbers.
			s.cache.drop(uint32(i))
		}
		s.blocks = s.blocks[:m.blocks]
		s.tail = tail
	}
	s.tail = s.tail[:m.tail]
	s.ids = s.ids[:m.ids]
	if m.ids > 0 {
		s.ids[m.ids-1] = s.ids[m.ids-1][:m.idLen]
	}
	return nil
}

// unindexLocked removes ord, the last record, from the indexes.
func (s *recordStore) unindexLocked(r *protocol.Record, ord uint32) {
	if o, ok := s.idMore[r.ID]; ok && o == ord {
		delete(s.idMore, r.ID)
	} else {
		delete(s.byID, s.hash(r.ID))
	}
	if ar := s.agents[r.Agent]; ar != nil {
		if i := ar.search(r.Seq); i < len(ar.ords) && ar.ords[i] == ord {
			ar.seqs, ar.ords = slices.Delete(ar.seqs, i, i+1), slices.Delete(ar.ords, i, i+1)
		}
		if len(ar.ords) == 0 {
			delete(s.agents, r.Agent)
		} else if ar.first == ord {
			ar.first = slices.Min(ar.ords)
		}
	}
	dropLast := func(m map[string][]uint32, key string) {
		if l := m[key]; len(l) > 0 && l[len(l)-1] == ord {
			if l = l[:len(l)-1]; len(l) == 0 {
				delete(m, key)
			} else {
				m[key] = l
			}
		}
	}
	if l := s.byPledge[r.Pledge]; len(l) > 0 && l[len(l)-1].ord == ord {
		if l = l[:len(l)-1]; len(l) == 0 {
			delete(s.byPledge, r.Pledge)
		} else {
			s.byPledge[r.Pledge] = l
		}
	}
	if r.Target != "" {
		dropLast(s.byTarget, r.Target)
	}
	if s.role == RoleHub {
		for _, sn := range uniqueSerials(r.Serials) {
			h := s.hash(sn)
			if l := s.serialMore[h]; len(l) > 0 && l[len(l)-1] == ord {
				if l = l[:len(l)-1]; len(l) == 0 {
					delete(s.serialMore, h)
				} else {
					s.serialMore[h] = l
				}
			} else if first, ok := s.bySerial[h]; ok && first == ord {
				delete(s.bySerial, h)
			}
		}
	}
}

// holds reports whether the store has a record with id whose JSON is raw.
func (s *recordStore) holds(id string, raw []byte) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ord, ok := s.lookupLocked(id, uint32(len(s.slots)))
	if !ok {
		return false
	}
	stored, err := s.jsonLocked(ord)
	return err == nil && bytes.Equal(stored, raw)
}

// idLocked returns the id of record ord, without a copy.
func (s *recordStore) idLocked(ord uint32) []byte {
	sl := s.slots[ord]
	return s.ids[sl.idChunk][sl.idOff : sl.idOff+uint32(sl.idLen)]
}

// lookupLocked returns the ordinal of the record with id, if below n.
func (s *recordStore) lookupLocked(id string, n uint32) (uint32, bool) {
	if ord, ok := s.byID[s.hash(id)]; ok && ord < n && string(s.idLocked(ord)) == id {
		return ord, true
	}
	if ord, ok := s.idMore[id]; ok && ord < n {
		return ord, true
	}
	return 0, false
}

// jsonLocked returns the JSON of record ord. It may decompress a block; the
// bytes are never written again.
func (s *recordStore) jsonLocked(ord uint32) ([]byte, error) {
	sl := s.slots[ord]
	var block []byte
	if int(sl.block) == len(s.blocks) {
		block = s.tail
	} else {
		var err error
		if block, err = s.blockLocked(sl.block); err != nil {
			return nil, err
		}
	}
	return block[sl.off : sl.off+sl.n : sl.off+sl.n], nil
}

// blockLocked returns block i decompressed, from the cache if it can.
func (s *recordStore) blockLocked(i uint32) ([]byte, error) {
	if b, ok := s.cache.get(i); ok {
		return b, nil
	}
	b, err := s.dec.DecodeAll(s.blocks[i], make([]byte, 0, recordBlockSize+recordBlockSize/4))
	if err != nil {
		return nil, fmt.Errorf("decompress record block %d: %w", i, err)
	}
	s.cache.put(i, b)
	return b, nil
}

func (s *recordStore) recordLocked(ord uint32) (*protocol.Record, error) {
	return s.recordIn(ord, nil)
}

// recordIn decodes record ord, sharing its repeated strings through in
// (which may be nil).
func (s *recordStore) recordIn(ord uint32, in *interner) (*protocol.Record, error) {
	raw, err := s.jsonLocked(ord)
	if err != nil {
		return nil, err
	}
	return decodeStored(raw, in)
}

// decodeStored decodes the JSON of a stored record.
func decodeStored(raw []byte, in *interner) (*protocol.Record, error) {
	if r, ok := decodeRecord(raw, in); ok {
		return r, nil
	}
	r := new(protocol.Record)
	if err := json.Unmarshal(raw, r); err != nil {
		return nil, fmt.Errorf("decode stored record: %w", err)
	}
	return r, nil
}

// blockCache keeps recently read blocks decompressed. It has its own lock:
// readers hold the store's only for reading.
type blockCache struct {
	mu    sync.Mutex
	m     map[uint32][]byte
	order []uint32 // oldest first
	bytes int      // of the blocks in m
}

func (c *blockCache) get(i uint32) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.m[i]
	return b, ok
}

func (c *blockCache) put(i uint32, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[i]; ok {
		return
	}
	for len(c.order) > 0 && c.bytes+len(b) > blockCacheBytes {
		c.bytes -= len(c.m[c.order[0]])
		delete(c.m, c.order[0])
		c.order = c.order[1:]
	}
	c.m[i] = b
	c.bytes += len(b)
	c.order = append(c.order, i)
}

func (c *blockCache) drop(i uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bytes -= len(c.m[i])
	delete(c.m, i)
	c.order = slices.DeleteFunc(c.order, func(j uint32) bool { return j == i })
}

// Records is a read-only view of the records of one state of a ledger.
// Every record it returns is a fresh copy, the caller's to keep or change.
// The zero Records has no records.
type Records struct {
	s *recordStore
	n uint32
}

// RecordsOf returns the records of the state txn reads: in a Write, every
// record put so far.
func RecordsOf(txn *memdb.Txn) Records {
	obj, err := txn.First(TableRecords, IndexID, recordsRowKey)
	if row, ok := obj.(*recordsRow); ok && err == nil {
		if row.live {
			return Records{s: row.store, n: row.store.count()}
		}
		return Records{s: row.store, n: row.n}
	}
	return Records{}
}

// WatchRecords returns a channel that is closed once records are added
// after the state txn reads.
func WatchRecords(txn *memdb.Txn) (<-chan struct{}, error) {
	ch, _, err := txn.FirstWatch(TableRecords, IndexID, recordsRowKey)
	return ch, err
}

// Len returns the number of records.
func (v Records) Len() int { return int(v.n) }

// ByID returns the record with id, or nil.
func (v Records) ByID(id string) (*protocol.Record, error) {
	if v.s == nil {
		return nil, nil
	}
	v.s.mu.RLock()
	defer v.s.mu.RUnlock()
	ord, ok := v.s.lookupLocked(id, v.n)
	if !ok {
		return nil, nil
	}
	return v.s.recordLocked(ord)
}

// IDsWithPrefix returns up to limit ids that start with prefix, sorted.
func (v Records) IDsWithPrefix(prefix string, limit int) []string {
	if v.s == nil {
		return nil
	}
	v.s.mu.RLock()
	defer v.s.mu.RUnlock()
	var out []string
	for ord := range v.n {
		if id := v.s.idLocked(ord); bytes.HasPrefix(id, []byte(prefix)) {
			out = append(out, string(id))
		}
	}
	slices.Sort(out)
	return out[:min(len(out), max(limit, 0))]
}

// At returns the record of agent with sequence number seq, or nil.
func (v Records) At(agent string, seq uint64) (*protocol.Record, error) {
	if v.s == nil {
		return nil, nil
	}
	v.s.mu.RLock()
	defer v.s.mu.RUnlock()
	ar := v.s.agents[agent]
	if ar == nil {
		return nil, nil
	}
	i := ar.search(seq)
	if i == len(ar.seqs) || ar.seqs[i] != seq || ar.ords[i] >= v.n {
		return nil, nil
	}
	return v.s.recordLocked(ar.ords[i])
}

// LastSeq returns the highest sequence number of agent's records, or 0.
func (v Records) LastSeq(agent string) uint64 {
	if v.s == nil {
		return 0
	}
	v.s.mu.RLock()
	defer v.s.mu.RUnlock()
	ar := v.s.agents[agent]
	if ar == nil {
		return 0
	}
	for i := len(ar.ords) - 1; i >= 0; i-- {
		if ar.ords[i] < v.n {
			return ar.seqs[i]
		}
	}
	return 0
}

// Agents returns the agents that have records, sorted.
func (v Records) Agents() []string {
	if v.s == nil {
		return nil
	}
	v.s.mu.RLock()
	defer v.s.mu.RUnlock()
	out := make([]string, 0, len(v.s.agents))
	for a, ar := range v.s.agents {
		if ar.first < v.n {
			out = append(out, a)
		}
	}
	sort.Strings(out)
	return out
}

// scanPage is how many records an iterator takes from the indexes at a
// time, under the store's lock.
const scanPage = 256

// OfAgent yields agent's records with a sequence number of at least from,
// in sequence order.
func (v Records) OfAgent(agent string, from uint64) iter.Seq2[*protocol.Record, error] {
	return func(yield func(*protocol.Record, error) bool) {
		if v.s == nil {
			return
		}
		next := from
		for {
			recs, err, more := v.agentPage(agent, next)
			for _, r := range recs {
				if !yield(r, nil) {
					return
				}
				next = r.Seq + 1
			}
			if err != nil {
				yield(nil, err)
				return
			}
			if !more || next == 0 {
				return
			}
		}
	}
}

// agentPage returns up to scanPage of agent's records from seq from on,
// and whether there may be more.
func (v Records) agentPage(agent string, from uint64) ([]*protocol.Record, error, bool) {
	v.s.mu.RLock()
	defer v.s.mu.RUnlock()
	ar := v.s.agents[agent]
	if ar == nil {
		return nil, nil, false
	}
	var out []*protocol.Record
	i, size := ar.search(from), 0
	for ; i < len(ar.ords) && len(out) < scanPage && size < scanPageBytes; i++ {
		if ar.ords[i] >= v.n {
			continue
		}
		r, err := v.s.recordLocked(ar.ords[i])
		if err != nil {
			return out, err, false
		}
		size += int(v.s.slots[ar.ords[i]].n)
		out = append(out, r)
	}
	return out, nil, i < len(ar.ords)
}

// All yields every record in the order they were stored.
func (v Records) All() iter.Seq2[*protocol.Record, error] { return v.Since(0) }

// Since yields the records stored after the first n, in the order they
// were stored: what a state holds beyond an earlier one with n records.
// Going through records in the order they were stored reads each block
// once; going agent by agent at a hub, where the records of many agents
// are interleaved, would read a block for nearly every record.
func (v Records) Since(n int) iter.Seq2[*protocol.Record, error] {
	return func(yield func(*protocol.Record, error) bool) {
		first := uint32(min(max(n, 0), int(v.n)))
		ords := make([]uint32, 0, v.n-first)
		for ord := first; ord < v.n; ord++ {
			ords = append(ords, ord)
		}
		v.yieldOrds(ords, yield)
	}
}

// OfAgents yields the records of agents in the order they were stored,
// reading only the blocks that hold them, each once.
func (v Records) OfAgents(agents ...string) iter.Seq2[*protocol.Record, error] {
	return v.listed(func(s *recordStore) []uint32 {
		var ords []uint32
		for _, a := range agents {
			if ar := s.agents[a]; ar != nil {
				ords = append(ords, ar.ords...)
			}
		}
		slices.Sort(ords)
		return ords
	})
}

// yieldOrds yields the records of ords, which are sorted, and reports
// whether yield asked for all of them. Records are decoded a page at a
// time under the store's lock; past one page, the next page is decoded on
// another goroutine while the caller works through this one, so a long
// scan (a hub's status, an export) uses both cores. That goroutine never
// outlives the call: a view inside a Write may lose its records to an
// undo once the caller returns. Repeated strings (agents, sites, items,
// pledges) are shared among the records of a scan.
func (v Records) yieldOrds(ords []uint32, yield func(*protocol.Record, error) bool) bool {
	if len(ords) == 0 {
		return true
	}
	if len(ords) <= scanPage {
		p, rest := v.decodePage(ords, nil)
		if !p.yield(yield) {
			return false
		}
		if len(rest) == 0 {
			return true
		}
		ords = rest
	}
	in := newInterner()
	pages := make(chan recordPage, 1)
	stop := make(chan struct{})
	defer func() {
		close(stop)
		for range pages {
		}
	}()
	go func() {
		defer close(pages)
		for len(ords) > 0 {
			select {
			case <-stop:
				return
			default:
			}
			var p recordPage
			p, ords = v.decodePage(ords, in)
			select {
			case pages <- p:
			case <-stop:
				return
			}
			if p.err != nil {
				return
			}
		}
	}()
	for p := range pages {
		if !p.yield(yield) {
			return false
		}
	}
	return true
}

// recordPage is a run of decoded records and the error that ended it.
type recordPage struct {
	recs []*protocol.Record
	err  error
}

// decodePage decodes the records of a page from the start of ords (up to
// scanPage records or scanPageBytes of JSON) and returns them and the
// ordinals after the page.
func (v Records) decodePage(ords []uint32, in *interner) (recordPage, []uint32) {
	p := recordPage{recs: make([]*protocol.Record, 0, min(len(ords), scanPage))}
	v.s.mu.RLock()
	defer v.s.mu.RUnlock()
	size := 0
	for len(ords) > 0 && len(p.recs) < scanPage && size < scanPageBytes {
		ord := ords[0]
		r, err := v.s.recordIn(ord, in)
		if err != nil {
			p.err = err
			break
		}
		ords = ords[1:]
		size += int(v.s.slots[ord].n)
		p.recs = append(p.recs, r)
	}
	return p, ords
}

// yield yields the page's records, then its error, and reports whether
// yield asked for all of them.
func (p recordPage) yield(yield func(*protocol.Record, error) bool) bool {
	for _, r := range p.recs {
		if !yield(r, nil) {
			return false
		}
	}
	if p.err != nil {
		yield(nil, p.err)
		return false
	}
	return true
}

// below returns the ordinals of l below n, as a new slice.
func below(l []uint32, n uint32) []uint32 {
	i, _ := slices.BinarySearch(l, n)
	return slices.Clone(l[:i])
}

// Naming yields the records that name pledge, in the order they were
// stored.
func (v Records) Naming(pledge string) iter.Seq2[*protocol.Record, error] {
	return v.listed(func(s *recordStore) []uint32 {
		entries := s.byPledge[pledge]
		ords := make([]uint32, len(entries))
		for i, e := range entries {
			ords[i] = e.ord
		}
		return ords
	})
}

// Correcting yields the amendments and voids of the record with id, in the
// order they were stored.
func (v Records) Correcting(id string) iter.Seq2[*protocol.Record, error] {
	return v.listed(func(s *recordStore) []uint32 { return s.byTarget[id] })
}

// Corrected returns the ids of the records that amendments or voids
// target, whether or not those records are stored.
func (v Records) Corrected() []string {
	if v.s == nil {
		return nil
	}
	v.s.mu.RLock()
	defer v.s.mu.RUnlock()
	var out []string
	for id, l := range v.s.byTarget {
		if len(l) > 0 && l[0] < v.n {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// WithSerials yields the records that state any of serial numbers sns,
// each once, in the order they were stored. Only a hub's ledger keeps the
// index it needs: at an agent it yields nothing.
func (v Records) WithSerials(sns ...string) iter.Seq2[*protocol.Record, error] {
	return func(yield func(*protocol.Record, error) bool) {
		if len(sns) == 0 {
			return
		}
		want := make(map[string]bool, len(sns))
		for _, sn := range sns {
			want[sn] = true
		}
		candidates := v.listed(func(s *recordStore) []uint32 {
			var ords []uint32
			for sn := range want {
				h := s.hash(sn)
				if first, ok := s.bySerial[h]; ok {
					ords = append(append(ords, first), s.serialMore[h]...)
				}
			}
			slices.Sort(ords)
			return slices.Compact(ords)
		})
		for r, err := range candidates {
			// Other serial numbers may share the hashes.
			if err != nil || slices.ContainsFunc(r.Serials, func(sn string) bool { return want[sn] }) {
				if !yield(r, err) {
					return
				}
			}
		}
	}
}

func (v Records) listed(list func(*recordStore) []uint32) iter.Seq2[*protocol.Record, error] {
	return func(yield func(*protocol.Record, error) bool) {
		if v.s == nil {
			return
		}
		v.s.mu.RLock()
		ords := below(list(v.s), v.n)
		v.s.mu.RUnlock()
		v.yieldOrds(ords, yield)
	}
}

// eachJSON calls fn with the JSON of every record, in the order they were
// stored; for snapshots. The bytes are valid during the call only.
func (v Records) eachJSON(fn func(raw []byte) error) error {
	for first := uint32(0); first < v.n; first += scanPage {
		last := min(v.n, first+scanPage)
		var raws [][]byte
		v.s.mu.RLock()
		for ord := first; ord < last; ord++ {
			raw, err := v.s.jsonLocked(ord)
			if err != nil {
				v.s.mu.RUnlock()
				return err
			}
			raws = append(raws, raw)
		}
		v.s.mu.RUnlock()
		for _, raw := range raws {
			if err := fn(raw); err != nil {
				return err
			}
		}
	}
	return nil
}
