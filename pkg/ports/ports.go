// Package ports explains listen failures in terms a user can act on.
package ports

import (
	"fmt"
	"net"
)

// CheckFree fails with an error naming addr when something listens there.
func CheckFree(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return InUseError(addr, err)
	}
	return l.Close()
}

// InUseError explains a failed listen on addr.
func InUseError(addr string, err error) error {
	_, port, _ := net.SplitHostPort(addr)
	return fmt.Errorf("port %s (%s) is not available: %w; stop whatever uses it (ss -ltnp 'sport = :%s') or choose another port", port, addr, err, port)
}
