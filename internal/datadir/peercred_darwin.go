package datadir

import (
	"net"

	"golang.org/x/sys/unix"
)

// peerCred returns the uid of the process at the other end of c; macOS does
// not say its pid here.
func peerCred(c *net.UnixConn) (uid, pid int, known bool, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, false, err
	}
	var cred *unix.Xucred
	var cerr error
	err = raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptXucred(int(fd), unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		return 0, 0, false, err
	}
	return int(cred.Uid), 0, true, nil
}
