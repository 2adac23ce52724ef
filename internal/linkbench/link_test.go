package linkbench

import (
	"context"
	"math/rand/v2"
	"testing"
	"testing/synctest"
	"time"

	"fieldsync/internal/linksim"
	"fieldsync/internal/transport"
)

// objects returns n objects of size bytes each, deterministic.
func objects(n, size int, seed byte) []Object {
	rng := rand.NewChaCha8([32]byte{seed})
	objs := make([]Object, n)
	for i := range objs {
		objs[i] = Object{Name: "object", Data: make([]byte, size)}
		rng.Read(objs[i].Data)
	}
	return objs
}

// TestTransfer moves a few MB in chunks with per-object acknowledgements,
// as the agent's sync does, over each SPEC profile and the cut, through
// transport's Dialer and Listener: everything arrives, and after the cut
// the session goes on rather than starting over.
func TestTransfer(t *testing.T) {
	tests := []struct {
		profile string
		outage  time.Duration
		objects int
		// handover, if not zero, is when leo's first handover comes.
		handover time.Duration
	}{
		{"geo", 0, 3, 0},
		{"geo-bad", 0, 2, 0},
		{"leo", 0, 3, 0},
		{"leo", 0, 3, 500 * time.Millisecond},
		{"bgan", 0, 1, 0},
		{"geo", linksim.CutOutage, 3, 0},
		{"leo", linksim.CutOutage, 3, 0},
	}
	for _, tt := range tests {
		name := tt.profile
		if tt.outage > 0 {
			name = "cut-" + name
		}
		if tt.handover > 0 {
			name += "-handover"
		}
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p, err := linksim.ProfileByName(tt.profile)
				if err != nil {
					t.Fatal(err)
				}
				p.OutageFirst = tt.handover
				res := Transfer(t.Context(), Run{Profile: p, Seed: 11, Objects: objects(tt.objects, 1<<20, 1), Method: Shielded, Outage: tt.outage})
				if res.Err != nil {
					t.Fatal(res.Err)
				}
				t.Logf("%s: %d bytes in %v, goodput %.0f%%, %.3f link bytes per byte; %d dial(s); outage at %v, data again %v after, %d link bytes lost to it",
					name, res.Bytes, res.Took, 100*res.Goodput(p), res.LinkPerByte(), res.Dials, res.OutageAt, res.ResumeAfter, res.LinkBytesLost)
				if tt.handover > 0 && res.DownTime != p.OutageFor {
					t.Errorf("the link was down %v during the transfer, want one handover of %v", res.DownTime, p.OutageFor)
				}
				if res.Dials != 1 || res.ChunkBytesResent != 0 {
					t.Errorf("%d dials, %d chunk bytes sent again: the session started over", res.Dials, res.ChunkBytesResent)
				}
				if tt.outage > 0 {
					rtt := 2 * p.Delay
					if res.ResumeAfter > 2*rtt+rtt/4+20*time.Millisecond {
						t.Errorf("data again %v after the link's return, want within 2 round trips and a probe interval", res.ResumeAfter)
					}
				}
			})
		})
	}
}

// TestResumeAfterLongOutage takes the link down for longer than the QUIC
// idle timeout: the connection dies, the agent dials again as soon as it
// notices, and the session resumes from the hub's durable offset, sending
// again at most one chunk plus what was in flight.
func TestResumeAfterLongOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, _ := linksim.ProfileByName("geo")
		outage := transport.IdleTimeout + time.Minute
		res := Transfer(t.Context(), Run{Profile: p, Seed: 12, Objects: objects(1, 3<<20, 2), Method: Shielded, Outage: outage})
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		t.Logf("%d dials; %d chunk bytes sent again; data again %v after the link's return; took %v",
			res.Dials, res.ChunkBytesResent, res.ResumeAfter, res.Took)
		if res.Dials < 2 {
			t.Errorf("%d dials: the connection should not outlive a %v outage", res.Dials, outage)
		}
		// The agent's sockets share one address here, as behind a NAT
		// that keeps the port: the hub must take the new connection once
		// the old one is silent, not refuse it dial after dial.
		if res.Dials > 4 || res.Took > outage+2*time.Minute {
			t.Errorf("%d dials, %v in all: the agent could not reconnect after the link's return", res.Dials, res.Took)
		}
		// One chunk (the one the hub had not made durable) plus what was
		// in flight: a window of a few bandwidth-delay products.
		bdp := float64(p.Rate) / 8 * (2 * p.Delay).Seconds()
		if limit := 256<<10 + int64(3*bdp); res.ChunkBytesResent > limit {
			t.Errorf("%d chunk bytes sent again, want at most one chunk and the window (%d)", res.ChunkBytesResent, limit)
		}
	})
}

// TestPlainAndStriped checks that the baselines the benchmark runs work:
// plain QUIC, and striping over several plain connections.
func TestPlainAndStriped(t *testing.T) {
	for _, m := range []Method{Plain, Striped(4)} {
		t.Run(m.Name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p, _ := linksim.ProfileByName("leo")
				res := Transfer(context.Background(), Run{Profile: p, Seed: 13, Objects: objects(3, 256<<10, 3), Method: m})
				if res.Err != nil {
					t.Fatal(res.Err)
				}
			})
		})
	}
}
