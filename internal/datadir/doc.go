// Package datadir gives one process at a time ownership of a data directory,
// and lets commands reach the process that owns it.
//
// Both binaries keep all of their state in one data directory. Two processes
// must never work on it at once, yet a user must be able to run
// `agent record ...` or `hub status` while the daemon (`agent run`,
// `hub serve`) holds it. This package provides both halves:
//
//   - A [Lock] is an exclusive hold on the directory: an advisory file lock
//     (github.com/gofrs/flock: flock(2) on Unix, LockFileEx on Windows) on
//     DIR/lock. The kernel drops it when the process ends, however it ends
//     (kill -9, power loss), so a lock is never stale. The file also names
//     the holder's pid and command line, for messages such as
//     "waiting for DIR: in use by pid 4711 (agent sync)".
//   - A daemon that holds the lock calls [Serve] to answer on the control
//     socket DIR/control.sock (AF_UNIX, which Windows 10 and later support
//     too). A short command that finds the directory busy sends its
//     arguments there with [Forward]; the daemon runs the very same command
//     in-process against its open state and streams back stdout, stderr and
//     the exit status. stdin is not forwarded: a forwarded command reads
//     nothing from the terminal.
//   - [Acquire] is what a command line calls: take the lock; or, if a daemon
//     holds the directory, forward the command to it; or, if another short
//     command holds it, say so once on stderr and wait until it is free (or
//     a daemon appears to forward to), until ctx ends.
//
// # Files in the data directory
//
// DIR/lock is never removed (removing a lock file while someone waits on it
// would let two processes hold "the" lock). Byte 0 is the byte Windows locks
// (LockFileEx locks a range, and other handles cannot read it), so the
// holder's details follow from byte 1 as one JSON object:
//
//	{"pid":4711,"command":"agent sync","since":"2025-03-01T10:00:00Z"}
//
// DIR/control.sock exists while a daemon serves. A socket file left behind
// by a daemon that died is removed by the next [Serve]; only the lock holder
// serves, so any socket file found then is stale.
//
// # Control protocol, version 1
//
// All integers are big-endian. The client connects and sends one request:
//
//	uint32 length (at most MaxRequestSize)
//	length bytes of JSON: {"version":1,"args":[...],"dir":"/abs/cwd","env":{"FIELDSYNC_X":"..."}}
//
// args are the arguments after the program name; dir is the client's working
// directory, against which the daemon resolves relative paths (the daemon
// cannot chdir: it serves many commands at once); env holds only variables
// named FIELDSYNC_*. Strings are valid UTF-8 without NUL bytes. The client
// then sends nothing more, but keeps its side open: when the daemon sees the
// connection end, the client has gone (Ctrl-C) and the command is cancelled.
//
// The daemon answers with frames, each
//
//	byte   stream: 1 stdout, 2 stderr, 3 exit
//	uint32 length (at most MaxFrameSize)
//	length bytes of payload
//
// Output frames carry bytes in the order the command wrote them. The exit
// frame has a 4-byte payload, the exit status as an int32, and is the last
// frame; the daemon closes the connection after it. A connection that ends
// before the exit frame means the daemon went away mid-command: the command
// may or may not have taken effect.
//
// A request the daemon refuses (malformed, too large, an unknown protocol
// version, or sent by another user) is answered with one line on stderr and
// exit status 1, and nothing is run.
//
// # Who may connect
//
// The socket file is mode 0600. On Linux the daemon also checks the peer's
// uid with SO_PEERCRED (LOCAL_PEERCRED on macOS) and refuses anyone but its
// own user: a data directory is not always created 0700 (an operator may
// place it under /var/lib with a looser mode), and the socket exists for a
// moment between bind and chmod with the umask's mode. On Windows the socket
// file inherits the directory's ACL, which for the default per-user data
// directory admits only its owner; Windows has no peer credentials for
// AF_UNIX sockets.
package datadir
