package memory

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PageOutBinary asks the kernel to reclaim the pages of a process's own
// executable (pid 0: this process) that the process has mapped. berth's
// binary is large (all of Kubernetes, plus the embedded helper payload),
// and start-up touches code and data that idle never uses again — with the
// kernel's fault-around, nearly the whole file ends up mapped. Idle then
// faults back only what it uses. Clean, read-only file pages only: nothing
// is written, nothing is lost. Returns the bytes of mappings advised.
func PageOutBinary(pid int) (int, error) {
	proc := "self"
	if pid != 0 {
		proc = strconv.Itoa(pid)
	}
	exe, err := os.Readlink("/proc/" + proc + "/exe")
	if err != nil {
		return 0, err
	}
	f, err := os.Open("/proc/" + proc + "/maps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// struct iovec {base, len} pairs, addresses in the target process.
	var iovs []uint64
	total := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// start-end perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[5] != exe || strings.Contains(fields[1], "w") {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		iovs = append(iovs, start, end-start)
		total += int(end - start)
	}
	if err := sc.Err(); err != nil || len(iovs) == 0 {
		return 0, err
	}
	target := pid
	if target == 0 {
		target = os.Getpid()
	}
	pidfd, err := unix.PidfdOpen(target, 0)
	if err != nil {
		return 0, fmt.Errorf("pidfd_open %d: %w", target, err)
	}
	defer unix.Close(pidfd)
	_, _, errno := unix.Syscall6(unix.SYS_PROCESS_MADVISE, uintptr(pidfd),
		uintptr(unsafe.Pointer(&iovs[0])), uintptr(len(iovs)/2), unix.MADV_PAGEOUT, 0, 0)
	if errno != 0 {
		return 0, fmt.Errorf("process_madvise %d: %w", target, errno)
	}
	return total, nil
}
