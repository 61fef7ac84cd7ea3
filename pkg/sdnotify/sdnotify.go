// Package sdnotify tells systemd (Type=notify units) when berth is ready.
// The embedded kube-apiserver and kubelet notify READY=1 on their own, long
// before the node runs, and the apiserver then unsets NOTIFY_SOCKET; so
// berth takes the socket away from them at start and speaks for itself.
package sdnotify

import (
	"fmt"
	"net"
	"os"
)

// Socket is systemd's notify socket ("" when not run by systemd).
type Socket string

// Take returns NOTIFY_SOCKET and removes it from the environment, so that
// nothing else in the process (or its children) notifies systemd.
func Take() Socket {
	s := os.Getenv("NOTIFY_SOCKET")
	os.Unsetenv("NOTIFY_SOCKET")
	return Socket(s)
}

// Send sends a state ("READY=1", "STOPPING=1"); without a socket it does
// nothing.
func (s Socket) Send(state string) error {
	if s == "" {
		return nil
	}
	name := string(s)
	if name[0] == '@' { // abstract namespace
		name = "\x00" + name[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify systemd at %s: %w", s, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify systemd at %s: %w", s, err)
	}
	return nil
}
