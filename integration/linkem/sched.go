package linkem

import (
	"container/heap"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/raicnet/raic/pkg/mono"
)

// maxPacket is the largest packet a driver reads.
const maxPacket = 65535

// DefaultMaxPending bounds how many packets a driver holds at once, and
// maxPendingBytes their total size, so a misconfigured delay or a flood cannot
// grow memory without limit.
const (
	DefaultMaxPending = 1 << 14
	maxPendingBytes   = 64 << 20
)

// item is one packet waiting for its departure time.
type item struct {
	at   int64
	seq  uint64 // FIFO among equal departure times, so order-keeping holds
	buf  []byte
	conn *net.UDPConn   // relay: socket to write with
	dst  netip.AddrPort // relay: destination when conn is unconnected
}

type itemHeap []*item

func (h itemHeap) Len() int { return len(h) }
func (h itemHeap) Less(i, j int) bool {
	return h[i].at < h[j].at || (h[i].at == h[j].at && h[i].seq < h[j].seq)
}
func (h itemHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *itemHeap) Push(x any)   { *h = append(*h, x.(*item)) }
func (h *itemHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}

// scheduler releases packets at their departure times. One goroutine waits on a
// timerfd armed for the earliest departure: a timerfd has hrtimer precision (tens
// of microseconds), whereas Go timers round waits below a millisecond up to one,
// and a sleep per packet would need a goroutine per packet.
type scheduler struct {
	mu      sync.Mutex
	h       itemHeap
	seq     uint64
	armed   int64 // expiry the timerfd is set to, 0 when disarmed
	tfd     int
	max     int
	free    []*item
	bytes   int
	closed  bool
	deliver func(*item)
	link    *Link // receives the release lateness
	done    chan struct{}
}

func newScheduler(l *Link, maxPending int, deliver func(*item)) (*scheduler, error) {
	if maxPending <= 0 {
		maxPending = DefaultMaxPending
	}
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	s := &scheduler{tfd: fd, max: maxPending, deliver: deliver, link: l, done: make(chan struct{})}
	go s.run()
	return s, nil
}

// get returns a free item holding a copy of pkt, or nil when the scheduler
// already holds its maximum.
func (s *scheduler) get(pkt []byte) *item {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || len(s.h) >= s.max || s.bytes+len(pkt) > maxPendingBytes {
		return nil
	}
	var it *item
	if n := len(s.free); n > 0 {
		it = s.free[n-1]
		s.free = s.free[:n-1]
	} else {
		it = &item{buf: make([]byte, 0, 2048)}
	}
	it.buf = append(it.buf[:0], pkt...)
	return it
}

func (s *scheduler) put(it *item) {
	it.conn, it.dst = nil, netip.AddrPort{}
	if cap(it.buf) > 2048 {
		it.buf = make([]byte, 0, 2048) // do not keep jumbo buffers around
	}
	s.mu.Lock()
	if len(s.free) < 256 {
		s.free = append(s.free, it)
	}
	s.mu.Unlock()
}

// push schedules it for departure at it.at. It returns false (and recycles it)
// when the scheduler is full or closed.
func (s *scheduler) push(it *item) bool {
	s.mu.Lock()
	if s.closed || len(s.h) >= s.max || s.bytes+len(it.buf) > maxPendingBytes {
		s.mu.Unlock()
		s.put(it)
		return false
	}
	s.bytes += len(it.buf)
	s.seq++
	it.seq = s.seq
	heap.Push(&s.h, it)
	if s.armed == 0 || it.at < s.armed {
		s.arm(it.at)
	}
	s.mu.Unlock()
	return true
}

// arm sets the timerfd to fire at the absolute monotonic time at. Called with mu
// held.
func (s *scheduler) arm(at int64) {
	if at <= 0 {
		at = 1
	}
	s.armed = at
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(at)}
	_ = unix.TimerfdSettime(s.tfd, unix.TFD_TIMER_ABSTIME, &spec, nil)
}

func (s *scheduler) run() {
	defer close(s.done)
	// The releasing thread gets its own OS thread with a raised CPU priority (when
	// permitted: root), so other busy processes on the host delay releases less.
	// It stays locked until the goroutine ends, so the runtime discards the thread
	// instead of reusing it at that priority.
	runtime.LockOSThread()
	_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), -10)
	var due []*item
	var buf [8]byte
	for {
		// A blocking read parks this OS thread only; the runtime hands its P on.
		_, err := unix.Read(s.tfd, buf[:])
		if err != nil && !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EAGAIN) {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
		now := mono.Now()
		for len(s.h) > 0 && s.h[0].at <= now {
			it := heap.Pop(&s.h).(*item)
			s.bytes -= len(it.buf)
			due = append(due, it)
		}
		if len(s.h) > 0 {
			s.arm(s.h[0].at)
		} else {
			s.armed = 0
		}
		s.mu.Unlock()
		for i, it := range due {
			s.link.CountReleased(mono.Now() - it.at)
			s.deliver(it)
			s.put(it)
			due[i] = nil
		}
		due = due[:0]
	}
}

// pending returns how many packets wait.
func (s *scheduler) pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.h)
}

// close stops the scheduler; packets still waiting are discarded.
func (s *scheduler) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.h = nil
	s.arm(1) // wake the reader at once
	s.mu.Unlock()
	<-s.done
	unix.Close(s.tfd)
}
