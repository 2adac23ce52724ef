package agent

import (
	"crypto/tls"
	"encoding/json"
	"os"
	"sync"

	"fieldsync/internal/atomicfile"
)

// ticketFile keeps the hub's last TLS session ticket in the data directory.
const ticketFile = "hub-session.json"

// ticketCache is the agent's tls.ClientSessionCache: it keeps the hub's
// last session ticket in a file (0600, like the keys), so that the next sync
// resumes the session (no certificates exchanged) even when it runs in a
// new process (`agent sync`). Losing the file costs a full handshake,
// nothing else, as does a ticket the hub cannot open.
type ticketCache struct {
	path string
	// pin is the hub key the agent trusts: a resumed session skips the
	// check of the hub's certificate, so a ticket from a hub with another
	// key (before a new enrolment) is not used. agent is the agent's own
	// key: a resumed session presents the certificate of the session it
	// resumes, so a ticket from before the agent's key changed (a data
	// directory initialised again) is not used either.
	pin, agent string
	mu         sync.Mutex
}

// savedTicket is the file's content: one ticket, for the server name key
// and the hub key pin.
type savedTicket struct {
	Key    string `json:"key"`
	Pin    string `json:"pin"`
	Agent  string `json:"agent"`
	Ticket []byte `json:"ticket"`
	State  []byte `json:"state"` // tls.SessionState.Bytes: secret
}

// Get implements tls.ClientSessionCache.
func (c *ticketCache) Get(key string) (*tls.ClientSessionState, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, err := os.ReadFile(c.path)
	if err != nil {
		return nil, false
	}
	var t savedTicket
	if json.Unmarshal(b, &t) != nil || t.Key != key || t.Pin != c.pin || t.Agent != c.agent {
		return nil, false
	}
	st, err := tls.ParseSessionState(t.State)
	if err != nil {
		return nil, false
	}
	cs, err := tls.NewResumptionState(t.Ticket, st)
	if err != nil {
		return nil, false
	}
	return cs, true
}

// Put implements tls.ClientSessionCache; a nil cs forgets the ticket.
func (c *ticketCache) Put(key string, cs *tls.ClientSessionState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cs == nil {
		os.Remove(c.path)
		return
	}
	ticket, st, err := cs.ResumptionState()
	if err != nil || st == nil {
		return
	}
	state, err := st.Bytes()
	if err != nil {
		return
	}
	b, err := json.Marshal(savedTicket{Key: key, Pin: c.pin, Agent: c.agent, Ticket: ticket, State: state})
	if err != nil {
		return
	}
	// A ticket that is not saved costs the next sync a round trip.
	_ = atomicfile.Write(c.path, b, 0o600)
}
