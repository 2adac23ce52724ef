package hub

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/oklog/ulid/v2"

	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// DefaultEnrolmentValidity is how long an enrolment file can be used.
const DefaultEnrolmentValidity = 14 * 24 * time.Hour

// Limits on a pledge CSV file.
const (
	MaxPledgeFileSize = 16 << 20
	MaxPledgesPerFile = 100_000
)

// EnrolRequest describes the site an enrolment is for.
type EnrolRequest struct {
	Site, Name, Sector, Region string
	Addr                       string        // the hub address the agent will dial, HOST:PORT
	Valid                      time.Duration // how long the file can be used (DefaultEnrolmentValidity if zero)
}

// Enrol registers a new agent for a site and returns its one-time enrolment.
// Only the secret's hash is kept: the file is the only copy of the secret.
func (h *Hub) Enrol(req EnrolRequest) (*protocol.Enrolment, error) {
	if req.Valid == 0 {
		req.Valid = DefaultEnrolmentValidity
	}
	if _, _, err := net.SplitHostPort(req.Addr); err != nil {
		return nil, fmt.Errorf("--addr %q is not HOST:PORT: the address site agents dial to reach this hub", req.Addr)
	}
	if strings.TrimSpace(req.Name) == "" {
		return nil, errors.New("--name: the site needs a name people recognise")
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	now := h.now().UTC().Truncate(time.Second)
	e := &protocol.Enrolment{
		Format:       protocol.EnrolmentFormat,
		HubAddr:      req.Addr,
		HubKeyPin:    h.info.Fingerprint,
		HubKey:       h.info.Key,
		HubRecipient: h.info.Recipient,
		Site:         req.Site,
		SiteName:     req.Name,
		Sector:       req.Sector,
		Region:       req.Region,
		AgentID:      "A-" + ulid.Make().String(),
		Secret:       base64.RawURLEncoding.EncodeToString(secret),
		Expires:      now.Add(req.Valid),
	}
	if err := e.Validate(); err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(e.Secret))
	err := h.led.Write(func(tx *ledger.Txn) error {
		if err := tx.Put(ledger.TableSites, &ledger.Site{ID: req.Site, Name: req.Name, Sector: req.Sector, Region: req.Region}); err != nil {
			return err
		}
		return tx.Put(ledger.TableEnrolments, &ledger.Enrolment{
			Agent: e.AgentID, Site: req.Site, SecretHash: hex.EncodeToString(sum[:]), Expires: e.Expires,
		})
	})
	if err != nil {
		return nil, fmt.Errorf("store enrolment: %w", err)
	}
	return e, nil
}

// Revoke revokes an agent, or every agent of a site. A revoked agent can no
// longer connect, and bundles it sends afterwards are quarantined. Unused
// enrolments of the site are cancelled too. It returns the agents revoked.
func (h *Hub) Revoke(agentOrSite, reason string) ([]string, error) {
	var revoked, agents []string
	now := h.now().UTC()
	err := h.led.Write(func(tx *ledger.Txn) error {
		var targets []*ledger.Agent
		if obj, err := tx.First(ledger.TableAgents, ledger.IndexID, agentOrSite); err != nil {
			return err
		} else if obj != nil {
			targets = append(targets, obj.(*ledger.Agent))
		}
		it, err := tx.Get(ledger.TableAgents, ledger.IndexSite, agentOrSite)
		if err != nil {
			return err
		}
		for obj := it.Next(); obj != nil; obj = it.Next() {
			targets = append(targets, obj.(*ledger.Agent))
		}
		// Enrolments not yet used are agents too, in waiting.
		eit, err := tx.Get(ledger.TableEnrolments, ledger.IndexID)
		if err != nil {
			return err
		}
		var unused []*ledger.Enrolment
		for obj := eit.Next(); obj != nil; obj = eit.Next() {
			e := obj.(*ledger.Enrolment)
			if (e.Site == agentOrSite || e.Agent == agentOrSite) && e.Used.IsZero() {
				unused = append(unused, e)
			}
		}
		if len(targets) == 0 && len(unused) == 0 {
			return fmt.Errorf("%q is neither an agent nor a site with agents (see `hub status`)", agentOrSite)
		}
		for _, e := range unused {
			c := *e
			c.Used = now // burnt: it can no longer enrol anyone
			if err := tx.Put(ledger.TableEnrolments, &c); err != nil {
				return err
			}
			revoked = append(revoked, c.Agent+" (unused enrolment)")
		}
		for _, a := range targets {
			if a.IsRevoked() {
				continue
			}
			c := *a
			c.Revoked, c.RevokeReason = now, reason
			if err := tx.Put(ledger.TableAgents, &c); err != nil {
				return err
			}
			revoked = append(revoked, c.ID)
			agents = append(agents, c.ID)
		}
		return nil
	})
	if err == nil {
		// A session in progress ends now, not when it next fails: a
		// revoked device (captured, say) sends nothing more.
		for _, id := range agents {
			h.sessions.end(id, protocol.SessionRevoked, "agent revoked")
		}
	}
	return revoked, err
}

// AddPledges validates and stores pledges, assigning ids. They travel down to
// the site's agent at its next sync.
func (h *Hub) AddPledges(ps []protocol.Pledge) ([]protocol.Pledge, error) {
	now := h.now().UTC().Truncate(time.Second)
	err := h.led.Write(func(tx *ledger.Txn) error {
		seq, err := lastPledgeSeq(tx.Txn)
		if err != nil {
			return err
		}
		for i := range ps {
			seq++
			ps[i].Seq = seq
			ps[i].ID = fmt.Sprintf("P-%d", seq)
			ps[i].At = now
			if err := ps[i].Validate(); err != nil {
				if len(ps) > 1 {
					return fmt.Errorf("pledge %d: %w", i+1, err)
				}
				return err
			}
			if err := tx.Put(ledger.TablePledges, &ps[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ps, nil
}

// CancelPledge cancels a pledge; the cancellation travels down to the site.
func (h *Hub) CancelPledge(id string) error {
	return h.led.Write(func(tx *ledger.Txn) error {
		obj, err := tx.First(ledger.TablePledges, ledger.IndexID, id)
		if err != nil {
			return err
		}
		if obj == nil {
			return fmt.Errorf("pledge %q not found", id)
		}
		p := *obj.(*protocol.Pledge)
		if p.Cancelled {
			return fmt.Errorf("pledge %s is already cancelled", id)
		}
		seq, err := lastPledgeSeq(tx.Txn)
		if err != nil {
			return err
		}
		p.Cancelled, p.Seq = true, seq+1 // a new change number sends it down again
		return tx.Put(ledger.TablePledges, &p)
	})
}

func lastPledgeSeq(txn *memdb.Txn) (uint64, error) {
	obj, err := txn.Last(ledger.TablePledges, ledger.IndexSeq)
	if err != nil || obj == nil {
		return 0, err
	}
	return obj.(*protocol.Pledge).Seq, nil
}

// KnownSite reports whether a site was enrolled.
func (h *Hub) KnownSite(id string) bool {
	found := false
	h.led.Read(func(txn *memdb.Txn) error {
		obj, err := txn.First(ledger.TableSites, ledger.IndexID, id)
		found = err == nil && obj != nil
		return nil
	})
	return found
}

// ParsePledgeCSV reads pledges from a CSV file with a header row naming the
// columns site, donor, programme, kind, item, qty (any order; programme may
// be absent). The file is all or nothing: one bad row rejects it.
func ParsePledgeCSV(r io.Reader) ([]protocol.Pledge, error) {
	cr := csv.NewReader(io.LimitReader(r, MaxPledgeFileSize+1))
	cr.FieldsPerRecord = -1
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("line 1: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[strings.ToLower(strings.TrimSpace(strings.TrimPrefix(h, "\ufeff")))] = i
	}
	for _, need := range []string{"site", "donor", "kind", "item", "qty"} {
		if _, ok := col[need]; !ok {
			return nil, fmt.Errorf("line 1: the header has no %q column (need site, donor, kind, item, qty; programme optional)", need)
		}
	}
	var out []protocol.Pledge
	for line := 2; ; line++ {
		row, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if len(out) >= MaxPledgesPerFile {
			return nil, fmt.Errorf("more than %d pledges in one file; split it", MaxPledgesPerFile)
		}
		get := func(name string) string {
			if i, ok := col[name]; ok && i < len(row) {
				return strings.TrimSpace(row[i])
			}
			return ""
		}
		qty, err := strconv.ParseInt(get("qty"), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: qty: %q is not a whole number", line, get("qty"))
		}
		p := protocol.Pledge{ID: "P-0", Site: get("site"), Donor: get("donor"), Programme: get("programme"),
			Kind: protocol.PledgeKind(strings.ToLower(get("kind"))), Item: get("item"), Qty: qty}
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		p.ID = ""
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, errors.New("no pledges in the file (a header row and one row per pledge)")
	}
	return out, nil
}
