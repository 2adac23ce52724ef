// Package linksim simulates the network path between a site's agent and
// the hub: the satellite links of the SPEC's "Link profiles" (geo,
// geo-bad, leo, bgan), for tests and benchmarks of the sync over QUIC.
//
// # In tests: a Path
//
// A Path is an in-memory path with two ends, each a net.PacketConn that
// quic-go takes as its transport:
//
//	geo, _ := linksim.ProfileByName("geo")
//	path := linksim.NewPath(geo, 1)
//	defer path.Close()
//	agentConn, hubConn := path.Endpoints()
//	ln, _ := (&quic.Transport{Conn: hubConn}).Listen(tlsConf, quicConf)
//	conn, _ := (&quic.Transport{Conn: agentConn}).Dial(ctx, hubConn.LocalAddr(), tlsConf, quicConf)
//	...
//	stats := path.Stats() // bytes on the link per payload byte, losses
//
// A Path keeps no goroutine and reads the clock only through time.Now and
// timers, so under testing/synctest a ten-minute transfer over geo takes
// seconds and goes the same way every run: make the Path inside the
// bubble, and close it (or both ends) before the bubble's function
// returns.
//
// # The model
//
// Each direction is a drop-tail queue of Profile.QueueBytes in front of a
// transmitter of the profile's rate, then the propagation delay (the
// downlink's own, with Profile.Downlink set: links are rarely symmetric):
//
//	arrival = max(now, transmitter free) + (len+UDPOverhead)×8/rate + Delay + jitter
//
// Datagrams never overtake each other. A datagram is lost at random with
// probability Loss after it crossed the transmitter; the randomness comes
// from a PCG generator per direction seeded with the Path's seed, and the
// n-th datagram of a direction draws the same numbers whatever happens to
// it, so a seed gives the same losses in every run. While the link is down
// (scheduled outages of the profile, or Down, Up and Cut on the Path; Down
// can take one direction alone) datagrams written are dropped and those
// queued or in flight are lost.
// Stats counts each direction's datagrams and bytes: sent, delivered, lost,
// dropped by a full queue, dropped by an outage.
//
// # With real binaries: Relay and RelayTCP
//
// Relay forwards real UDP between a client and an upstream address with
// the same model in real time, so that `agent` and `hub` processes can be
// benchmarked over a profile. RelayTCP does the same for a TCP byte stream
// (an HTTPS baseline), modelling loss as the delay it costs TCP rather than
// as lost bytes; see its documentation for what that leaves out.
package linksim
