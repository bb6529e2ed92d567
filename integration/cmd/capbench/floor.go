package main

import (
	"net"
	"net/netip"
	"runtime"
	"syscall"
	"time"

	"github.com/raicnet/raic/pkg/udp"
	"golang.org/x/sys/unix"
)

// floorRate measures the machine's own limit for what the proxy does per
// packet in the kernel: one write(2) on a connected UDP socket per packet,
// round-robin over n sockets (one per session, as the proxy has), from one
// thread pinned to cpu, for d. It returns the packets per second the sink
// received. It is the ceiling for any proxy that makes one send system call per
// forwarded packet on this host. With ring, the same sends go in io_uring
// submissions of udp.MaxBatch (as the proxy's forward batches do); an error
// when the kernel has none.
func floorRate(s *sink, n, cpu, size int, d time.Duration, ring bool) (floorResult, error) {
	var r *udp.SendRing
	if ring {
		var err error
		if r, err = udp.NewSendRing(udp.MaxBatch); err != nil {
			return floorResult{}, err
		}
		defer r.Close()
	}
	fds := make([]int, 0, n)
	conns := make([]*net.UDPConn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(s.addr()))
		if err != nil {
			return floorResult{}, err
		}
		conns = append(conns, c)
		rc, err := c.SyscallConn()
		if err != nil {
			return floorResult{}, err
		}
		rc.Control(func(fd uintptr) { fds = append(fds, int(fd)) })
	}
	pkt := make([]byte, size)
	// The ring's batches: udp.MaxBatch sockets in turn, the same packet.
	batchFDs, bufs, res := make([]int32, udp.MaxBatch), make([][]byte, udp.MaxBatch), make([]int32, udp.MaxBatch)
	for i := range bufs {
		bufs[i] = pkt
	}
	done := make(chan error, 1)
	base := s.count.Load()
	var elapsed time.Duration
	var sent uint64
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			done <- err
			return
		}
		start := time.Now()
		end := start.Add(d)
		for i := 0; ; i++ {
			if i&1023 == 0 && time.Now().After(end) {
				break
			}
			if r == nil {
				if _, err := syscall.Write(fds[i%len(fds)], pkt); err == nil {
					sent++
				}
				continue
			}
			if i%udp.MaxBatch != udp.MaxBatch-1 {
				continue // one Send every udp.MaxBatch turns of i
			}
			for j := range batchFDs {
				batchFDs[j] = int32(fds[(i-j)%len(fds)])
			}
			if err := r.Send(batchFDs, bufs, res); err != nil {
				done <- err
				return
			}
			for _, v := range res {
				if v >= 0 {
					sent++
				}
			}
		}
		elapsed = time.Since(start)
		done <- nil
	}()
	if err := <-done; err != nil {
		return floorResult{}, err
	}
	time.Sleep(50 * time.Millisecond)
	return floorResult{sent: float64(sent) / elapsed.Seconds(), got: float64(s.count.Load()-base) / elapsed.Seconds()}, nil
}

// floorResult is a reference rate: packets per second sent and received at
// the sink.
type floorResult struct{ sent, got float64 }

// floorBatchRate is floorRate with sendmmsg: batches of udp.MaxBatch datagrams
// from one unconnected socket. It is the ceiling for a proxy that batches its
// sends to the server on this host.
func floorBatchRate(s *sink, cpu, size int, d time.Duration) (floorResult, error) {
	c, err := udp.Listen("udp4", udp.Options{Local: netip.MustParseAddrPort("127.0.0.1:0"), SendBuffer: 4 << 20})
	if err != nil {
		return floorResult{}, err
	}
	defer c.Close()
	msgs := make([]udp.Message, udp.MaxBatch)
	pkt := make([]byte, size)
	for i := range msgs {
		msgs[i] = udp.Message{Buf: pkt, N: size, Addr: s.addr()}
	}
	done := make(chan error, 1)
	base := s.count.Load()
	var elapsed time.Duration
	var sent uint64
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			done <- err
			return
		}
		start := time.Now()
		end := start.Add(d)
		for i := 0; ; i++ {
			if i&15 == 0 && time.Now().After(end) {
				break
			}
			n, _ := c.WriteBatch(msgs)
			sent += uint64(n)
		}
		elapsed = time.Since(start)
		done <- nil
	}()
	if err := <-done; err != nil {
		return floorResult{}, err
	}
	time.Sleep(50 * time.Millisecond)
	return floorResult{sent: float64(sent) / elapsed.Seconds(), got: float64(s.count.Load()-base) / elapsed.Seconds()}, nil
}

// loopSpeed runs a fixed integer loop on one thread pinned to cpu for about
// d and returns its speed in million iterations per second. The same loop
// on the same CPU moves only with what the process cannot see: the CPU's
// clock, its sibling hyperthread's or the host's other guests' load (steal
// shows only time taken whole). Measured right after each timed phase, it
// tells whether a slower phase ran on a slower CPU.
func loopSpeed(cpu int, d time.Duration) float64 {
	return onCPU(cpu, func() float64 {
		x, n := uint64(1), 0
		start := time.Now()
		for time.Since(start) < d {
			for i := 0; i < 100000; i++ {
				x = x*6364136223846793005 + 1442695040888963407
				x ^= x >> 29
			}
			n += 100000
		}
		sinkLoop = x
		return float64(n) / time.Since(start).Seconds() / 1e6
	})
}

// onCPU runs f on a thread of its own pinned to cpu and returns its result,
// or 0 when the thread cannot be pinned there.
func onCPU(cpu int, f func() float64) float64 {
	out := make(chan float64, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var set, old unix.CPUSet
		unix.SchedGetaffinity(0, &old)
		set.Set(cpu)
		if unix.SchedSetaffinity(0, &set) != nil {
			out <- 0
			return
		}
		defer unix.SchedSetaffinity(0, &old)
		out <- f()
	}()
	return <-out
}

// sinkLoop keeps loopSpeed's result alive.
var sinkLoop uint64

// chase is a random cycle over 4 MB of indexes (memLatency), made once.
var chase []uint32

// memLatency follows a random cycle through a 4 MB table (larger than a
// core's L2, within a shared L3) on one thread pinned to cpu for about d and
// returns nanoseconds per step: it moves with the cache and memory traffic
// of whatever shares them, other guests of the host included, which the
// integer loop of loopSpeed does not feel.
func memLatency(cpu int, d time.Duration) float64 {
	if chase == nil {
		const n = 1 << 20
		perm := make([]uint32, n)
		for i := range perm {
			perm[i] = uint32(i)
		}
		x := uint64(88172645463325252)
		for i := n - 1; i > 0; i-- { // Fisher-Yates, xorshift
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			j := int(x % uint64(i+1))
			perm[i], perm[j] = perm[j], perm[i]
		}
		chase = make([]uint32, n)
		for i := range perm {
			chase[perm[i]] = perm[(i+1)%n]
		}
	}
	return onCPU(cpu, func() float64 {
		p, n := uint32(0), 0
		start := time.Now()
		for time.Since(start) < d {
			for i := 0; i < 100000; i++ {
				p = chase[p]
			}
			n += 100000
		}
		sinkLoop += uint64(p)
		return float64(time.Since(start).Nanoseconds()) / float64(n)
	})
}
