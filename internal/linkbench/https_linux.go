//go:build linux

package linkbench

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"fieldsync/internal/linksim"
	"fieldsync/internal/transport"
)

// The two ends of the TCP link and their addresses.
const (
	tunName   = "fsl0"
	agentIP   = "10.77.0.2"
	hubIP     = "10.77.0.1"
	httpsPort = "8443"
	tunMTU    = 1500
)

// ErrNoNamespaces says the HTTPS baseline cannot run here.
var ErrNoNamespaces = errors.New("the HTTPS baseline needs root, ip(8) from iproute2 and /dev/net/tun")

// tcpLink is two network namespaces, an agent's and a hub's, whose TUN
// devices are joined through a linksim Path in real time: the kernel's
// TCP, end to end, over the simulated link.
type tcpLink struct {
	nsAgent, nsHub string
	tunAgent       *os.File
	tunHub         *os.File
	path           *linksim.Path
	pathStart      time.Time // when path started: its scheduled outages count from there
	wg             sync.WaitGroup

	mu    sync.Mutex
	up    time.Time // when the link comes back from an outage
	first time.Time // when the hub's end got a full-size packet after up
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// inNetns runs fn on a thread in the network namespace ns: sockets and
// TUN devices it makes belong there, and work from any thread after.
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread dies with this goroutine, so no
		// other goroutine runs in the namespace.
		runtime.LockOSThread()
		f, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter network namespace %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// createTUN makes the TUN device name in namespace ns, non-blocking so
// that Close ends a blocked Read.
func createTUN(ns, name string) (*os.File, error) {
	var tun *os.File
	err := inNetns(ns, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("create TUN device: %w", err)
		}
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			return err
		}
		tun = os.NewFile(uintptr(fd), name)
		return nil
	})
	return tun, err
}

// openTUN makes the TUN device in namespace ns and gives it addr.
func openTUN(ns, addr string) (*os.File, error) {
	tun, err := createTUN(ns, tunName)
	if err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"-n", ns, "addr", "add", addr + "/24", "dev", tunName},
		{"-n", ns, "link", "set", tunName, "mtu", fmt.Sprint(tunMTU), "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	} {
		if err := run("ip", args...); err != nil {
			tun.Close()
			return nil, err
		}
	}
	return tun, nil
}

// newTCPLink sets up the namespaces and the link of p.
func newTCPLink(p linksim.Profile, seed int64) (*tcpLink, error) {
	if os.Geteuid() != 0 {
		return nil, ErrNoNamespaces
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, ErrNoNamespaces
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return nil, ErrNoNamespaces
	}
	l := &tcpLink{
		nsAgent: fmt.Sprintf("fslb%d-agent", os.Getpid()),
		nsHub:   fmt.Sprintf("fslb%d-hub", os.Getpid()),
	}
	for _, ns := range []string{l.nsAgent, l.nsHub} {
		if err := run("ip", "netns", "add", ns); err != nil {
			l.close()
			return nil, fmt.Errorf("%w (%v)", ErrNoNamespaces, err)
		}
	}
	var err error
	if l.tunAgent, err = openTUN(l.nsAgent, agentIP); err != nil {
		l.close()
		return nil, err
	}
	if l.tunHub, err = openTUN(l.nsHub, hubIP); err != nil {
		l.close()
		return nil, err
	}
	// linksim charges a UDP datagram's 28 header bytes on top of what is
	// written; an IP packet from the TUN device carries its headers
	// already, so the rate is raised to match for full-size packets.
	q := p
	q.Rate = p.Rate * (tunMTU + linksim.UDPOverhead) / tunMTU
	if p.Downlink != nil {
		down := *p.Downlink
		down.Rate = down.Rate * (tunMTU + linksim.UDPOverhead) / tunMTU
		q.Downlink = &down
	} else {
		q.DownRate = cmp.Or(p.DownRate, p.Rate) * (tunMTU + linksim.UDPOverhead) / tunMTU
	}
	l.path, l.pathStart = linksim.NewPath(q, seed), time.Now()
	agentEnd, hubEnd := l.path.Endpoints()
	pump := func(tun *os.File, end *linksim.Conn, to net.Addr) {
		l.wg.Go(func() { // TUN to link
			buf := make([]byte, 65536)
			for {
				n, err := tun.Read(buf)
				if err != nil {
					return
				}
				end.WriteTo(buf[:n], to)
			}
		})
		l.wg.Go(func() { // link to TUN
			buf := make([]byte, 65536)
			for {
				n, _, err := end.ReadFrom(buf)
				if err != nil {
					return
				}
				if n > 1000 && tun == l.tunHub {
					l.mu.Lock()
					if !l.up.IsZero() && l.first.IsZero() && !time.Now().Before(l.up) {
						l.first = time.Now()
					}
					l.mu.Unlock()
				}
				tun.Write(buf[:n])
			}
		})
	}
	pump(l.tunAgent, agentEnd, hubEnd.LocalAddr())
	pump(l.tunHub, hubEnd, agentEnd.LocalAddr())
	return l, nil
}

func (l *tcpLink) close() {
	for _, f := range []*os.File{l.tunAgent, l.tunHub} {
		if f != nil {
			f.Close()
		}
	}
	if l.path != nil {
		l.path.Close()
	}
	l.wg.Wait()
	for _, ns := range []string{l.nsAgent, l.nsHub} {
		run("ip", "netns", "del", ns)
	}
}

// selfSigned returns a throwaway certificate for the HTTPS server.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IPAddresses: []net.IP{net.ParseIP(hubIP)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// HTTPSUpload uploads the objects with Go's net/http (HTTP/1.1 over TLS
// 1.3, one POST per object on a kept-alive connection) over the kernel's
// TCP with congestion control cc ("" for the kernel's default), through
// the link of p, in real time. With outage set, the link goes down for
// that long once the server has half of the bytes. It stops after limit
// and then reports what it moved. It returns ErrNoNamespaces where it
// cannot run.
func HTTPSUpload(ctx context.Context, p linksim.Profile, seed int64, objs []Object, cc string, outage, limit time.Duration) (Result, error) {
	res := Result{Profile: p.Name, Method: "https (kernel tcp)"}
	l, err := newTCPLink(p, seed)
	if err != nil {
		return res, err
	}
	defer l.close()
	if cc == "" {
		b, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control")
		cc = strings.TrimSpace(string(b))
	}
	res.Method = fmt.Sprintf("https, kernel tcp %s", cc)

	cert, err := selfSigned()
	if err != nil {
		return res, err
	}
	var ln net.Listener
	if err := inNetns(l.nsHub, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(hubIP, httpsPort))
		return err
	}); err != nil {
		return res, err
	}
	var total int64
	for _, o := range objs {
		total += int64(len(o.Data))
	}
	var got atomic.Int64
	var cutOnce sync.Once
	var q1, q3, cutAt atomic.Int64 // unix nanoseconds
	start := time.Now()
	srv := &http.Server{
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			buf := make([]byte, 32<<10)
			for {
				n, err := r.Body.Read(buf)
				g := got.Add(int64(n))
				if 4*g >= total {
					q1.CompareAndSwap(0, time.Now().UnixNano())
				}
				if 4*g >= 3*total {
					q3.CompareAndSwap(0, time.Now().UnixNano())
				}
				if g >= total/2 && outage > 0 {
					cutOnce.Do(func() {
						cutAt.Store(time.Now().UnixNano())
						l.mu.Lock()
						l.up = time.Now().Add(outage)
						l.mu.Unlock()
						l.path.Cut(outage)
					})
				}
				if err != nil {
					break
				}
			}
			w.WriteHeader(http.StatusNoContent)
		}),
	}
	var srvWG sync.WaitGroup
	srvWG.Go(func() { srv.ServeTLS(ln, "", "") })
	defer func() {
		srv.Close()
		srvWG.Wait()
	}()

	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13},
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			err = inNetns(l.nsAgent, func() (err error) {
				d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
					var serr error
					if err := c.Control(func(fd uintptr) {
						serr = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, cc)
					}); err != nil {
						return err
					}
					return serr
				}}
				conn, err = d.DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	url := "https://" + net.JoinHostPort(hubIP, httpsPort) + "/upload"
	for _, o := range objs {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(o.Data))
		if err != nil {
			return res, err
		}
		resp, err := client.Do(req)
		if err != nil {
			res.Err = err
			break
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	res.Took = time.Since(start)
	down := linkDown{p: p, start: l.pathStart, cut: outage}
	if at := cutAt.Load(); at != 0 {
		down.cutAt = time.Unix(0, at)
		res.OutageAt = down.cutAt.Sub(start)
	}
	res.DownTime = down.between(start, time.Now())
	res.Bytes = min(got.Load(), total)
	s := l.path.Stats()
	res.Up, res.Down = s.Uplink, s.Downlink
	res.LinkBytesLost = s.Uplink.OutageDrops.Bytes
	l.mu.Lock()
	if !l.first.IsZero() {
		res.ResumeAfter = l.first.Sub(l.up)
	}
	l.mu.Unlock()
	if a, b := q1.Load(), q3.Load(); a != 0 && b != 0 {
		q1, q3 := time.Unix(0, a), time.Unix(0, b)
		res.Steady = steady(p, total, q1, q3, down.between(q1, q3))
	}
	if res.Err != nil && ctx.Err() != nil {
		res.Err = fmt.Errorf("stopped after %v with %d of %d bytes across", limit, res.Bytes, total)
	}
	return res, nil
}

// RealUDPTransfer runs the agent's session (Transfer's) over real UDP
// sockets with transport's Dialer and Listener, through the link of p in
// real time: the shield outside testing/synctest, on the kernel's
// sockets and timers. It returns ErrNoNamespaces where it cannot run.
func RealUDPTransfer(ctx context.Context, p linksim.Profile, seed int64, objs []Object, limit time.Duration) (Result, error) {
	res := Result{Profile: p.Name, Method: "fieldsync (quic+shield), real UDP, real time"}
	l, err := newTCPLink(p, seed)
	if err != nil {
		return res, err
	}
	defer l.close()
	serverTLS, clientTLS, err := tlsPair()
	if err != nil {
		return res, err
	}
	var hubConn net.PacketConn
	if err := inNetns(l.nsHub, func() (err error) {
		hubConn, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(hubIP), Port: 4433})
		return err
	}); err != nil {
		return res, err
	}
	ln, err := transport.Listen(hubConn, serverTLS)
	if err != nil {
		hubConn.Close()
		return res, err
	}
	dialer := &transport.Dialer{ListenPacket: func() (pc net.PacketConn, err error) {
		err = inNetns(l.nsAgent, func() (err error) {
			pc, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(agentIP)})
			return err
		})
		return pc, err
	}}
	hub := newReceiver(objs)
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { hub.serve(ctx, ln) })
	start := time.Now()
	a := &agent{dialer: dialer, addr: net.JoinHostPort(hubIP, "4433"), tls: clientTLS, objs: objs}
	res.Err = a.session(ctx)
	res.Took = time.Since(start)
	res.DownTime = p.DownBetween(l.pathStart, start, time.Now())
	res.QUIC, res.Dials = a.stats, a.dials
	cancel()
	wg.Wait()
	dialer.Wait()
	ln.Shutdown()
	s := l.path.Stats()
	res.Up, res.Down = s.Uplink, s.Downlink
	hub.mu.Lock()
	for _, n := range hub.have {
		res.Bytes += int64(n)
	}
	hub.mu.Unlock()
	res.Steady = steady(p, int64(hub.total), hub.q1, hub.q3, p.DownBetween(l.pathStart, hub.q1, hub.q3))
	if res.Err == nil {
		res.Err = hub.check()
	}
	return res, nil
}
