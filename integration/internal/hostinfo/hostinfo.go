// Package hostinfo reads what the benchmark commands report about the host and
// their processes: CPU time and pinning, RSS, load, kernel UDP drops.
package hostinfo

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc/PID/stat; it is 100
// on every Linux architecture Go supports.
const clockTicks = 100

// CPUTime returns the user+system CPU seconds process pid has used, or 0 when
// it cannot be read.
func CPUTime(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; fields after it are plain.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64) // field 14: utime
	st, _ := strconv.ParseFloat(f[12], 64) // field 15: stime
	return (ut + st) / clockTicks
}

// PinSelf pins every thread of this process to cpu. Threads the runtime starts
// later inherit the mask from the thread that creates them.
func PinSelf(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			return err
		}
	}
	return nil
}

// LoadAvg returns the 1-minute load average, or "?".
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// CPUModel returns the CPU model name, or "unknown CPU".
func CPUModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// Kernel returns the kernel release.
func Kernel() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// PinPID pins the existing threads of process pid to cpu.
func PinPID(pid, cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return err
	}
	for _, t := range tasks {
		if tid, err := strconv.Atoi(t.Name()); err == nil {
			unix.SchedSetaffinity(tid, &set)
		}
	}
	return nil
}

// RSS returns the resident set size of process pid and its peak (VmRSS and
// VmHWM from /proc/PID/status), in bytes.
func RSS(pid int) (cur, peak int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		switch k {
		case "VmRSS":
			cur = n << 10
		case "VmHWM":
			peak = n << 10
		}
	}
	return cur, peak
}

// BusyCPU returns the CPU seconds all CPUs have spent running processes
// since boot (user, nice, system and steal in /proc/stat). Interrupt and
// softirq time are left out: much of it is the loopback traffic of the
// benchmark itself, which the processes' own times do not include.
func BusyCPU() float64 { return StatBusy("cpu", true) }

// StatBusy returns the busy seconds of the /proc/stat line named name (cpu for
// all, cpuN for one), without interrupt and softirq time when noIRQ is set.
func StatBusy(name string, noIRQ bool) float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	var f []string
	for _, line := range strings.Split(string(b), "\n") {
		if g := strings.Fields(line); len(g) > 0 && g[0] == name {
			f = g
			break
		}
	}
	if len(f) < 5 {
		return 0
	}
	var busy float64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || (noIRQ && (i == 5 || i == 6)) { // idle, iowait; irq, softirq
			continue
		}
		if i >= 8 { // guest times are already in user
			break
		}
		n, _ := strconv.ParseFloat(v, 64)
		busy += n
	}
	return busy / clockTicks
}

// StatSteal returns the seconds that the hypervisor ran something else
// while line name of /proc/stat ("cpu", "cpu0", ...) wanted to run (its
// steal column): time a virtual CPU lost that no process on it can see.
func StatSteal(name string) float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if g := strings.Fields(line); len(g) > 8 && g[0] == name {
			n, _ := strconv.ParseFloat(g[8], 64)
			return n / clockTicks
		}
	}
	return 0
}

// Background measures the CPU that processes other than pids used, as a
// percentage of one core, between start and stop.
type Background struct {
	pids       []int
	busy, ours float64
	t          float64
}

func StartBackground(pids ...int) *Background {
	b := &Background{pids: pids}
	b.busy, b.ours = BusyCPU(), b.OursNow()
	return b
}

func (b *Background) OursNow() float64 {
	var s float64
	for _, p := range b.pids {
		s += CPUTime(p)
	}
	return s
}

// stop returns the others' CPU, percent of one core, over elapsed seconds.
func (b *Background) Stop(elapsed float64) float64 {
	others := (BusyCPU() - b.busy) - (b.OursNow() - b.ours)
	return max(0, 100*others/elapsed)
}

// NiceSelf sets the nice value of every thread of this process (Linux keeps it
// per thread); threads started later, and child processes, inherit it.
func NiceSelf(nice int) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil {
			return err
		}
	}
	return nil
}

// SourceState names the commit the benchmark was built from and the files of
// the programs under test (not the benchmarks) that differ from it, since
// several people change the same checkout. It runs read-only git commands and
// returns "" when git is not available.
func SourceState() string {
	head, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	s := "commit " + strings.TrimSpace(string(head))
	st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no", "--", "router", "proxy", "pkg", "raic").Output()
	if err != nil {
		return s
	}
	var files []string
	for _, line := range strings.Split(strings.TrimRight(string(st), "\n"), "\n") {
		if len(line) > 3 {
			files = append(files, strings.TrimSpace(line[3:]))
		}
	}
	if len(files) > 0 {
		s += " with uncommitted changes to " + strings.Join(files, ", ")
	}
	return s
}

// RcvbufErrors returns the kernel's count of UDP datagrams dropped for a full
// receive buffer (all sockets), from /proc/net/snmp.
func RcvbufErrors() uint64 {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return 0
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "Udp: ") {
			continue
		}
		f := strings.Fields(line)[1:]
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "RcvbufErrors" && i < len(f) {
				v, _ := strconv.ParseUint(f[i], 10, 64)
				return v
			}
		}
	}
	return 0
}

// SocketDrops returns, for each UDP socket process pid holds that the kernel
// dropped datagrams on (full receive buffer), its addresses and the count, from
// /proc/net/udp and /proc/net/udp6 (the "drops" column).
func SocketDrops(pid int) map[string]uint64 {
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil
	}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	out := map[string]uint64{}
	for _, table := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 13 || !inodes[f[9]] {
				continue
			}
			d, _ := strconv.ParseUint(f[12], 10, 64)
			if d > 0 {
				out[hexAddr(f[1])+" ← "+hexAddr(f[2])] = d
			}
		}
	}
	return out
}

// hexAddr decodes a /proc/net/udp address (little-endian hex IPv4 or IPv6
// words, then the port); it returns the port alone for anything else.
func hexAddr(s string) string {
	host, port, ok := strings.Cut(s, ":")
	if !ok {
		return s
	}
	p, _ := strconv.ParseUint(port, 16, 16)
	if len(host) == 8 {
		v, _ := strconv.ParseUint(host, 16, 32)
		return fmt.Sprintf("%d.%d.%d.%d:%d", v&0xff, v>>8&0xff, v>>16&0xff, v>>24, p)
	}
	if len(host) == 32 && strings.HasPrefix(host, "0000000000000000FFFF0000") {
		v, _ := strconv.ParseUint(host[24:], 16, 32)
		return fmt.Sprintf("%d.%d.%d.%d:%d", v&0xff, v>>8&0xff, v>>16&0xff, v>>24, p)
	}
	return fmt.Sprintf("[%s]:%d", host, p)
}
