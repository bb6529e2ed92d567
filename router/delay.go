package router

import (
	"container/heap"
	"context"
	"sync"
	"time"

	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/wire"
)

// delayQueue holds the delayed extra copies of RAIC-1 datagrams until they are
// due. Its slots are allocated once; when all are taken a new copy is dropped
// (and counted by the caller) rather than growing the queue.
type delayQueue struct {
	mu     sync.Mutex
	slots  []delayed
	free   []int
	due    dueHeap
	wake   chan struct{}
	closed bool
}

type delayed struct {
	due    int64
	uplink int
	n      int
	buf    [wire.MaxDatagram]byte
}

type dueHeap struct {
	idx   []int
	slots []delayed
}

func (h dueHeap) Len() int           { return len(h.idx) }
func (h dueHeap) Less(i, j int) bool { return h.slots[h.idx[i]].due < h.slots[h.idx[j]].due }
func (h dueHeap) Swap(i, j int)      { h.idx[i], h.idx[j] = h.idx[j], h.idx[i] }
func (h *dueHeap) Push(x any)        { h.idx = append(h.idx, x.(int)) }
func (h *dueHeap) Pop() any {
	n := len(h.idx) - 1
	v := h.idx[n]
	h.idx = h.idx[:n]
	return v
}

func newDelayQueue(capacity int) *delayQueue {
	q := &delayQueue{slots: make([]delayed, capacity), free: make([]int, capacity), wake: make(chan struct{}, 1)}
	for i := range q.free {
		q.free[i] = i
	}
	q.due = dueHeap{idx: make([]int, 0, capacity), slots: q.slots}
	return q
}

// push copies dg into a free slot to be sent on uplink at due; false when full.
func (q *delayQueue) push(due int64, uplink int, dg []byte) bool {
	q.mu.Lock()
	if len(q.free) == 0 || q.closed {
		q.mu.Unlock()
		return false
	}
	i := q.free[len(q.free)-1]
	q.free = q.free[:len(q.free)-1]
	s := &q.slots[i]
	s.due, s.uplink, s.n = due, uplink, copy(s.buf[:], dg)
	heap.Push(&q.due, i)
	first := q.due.idx[0] == i
	q.mu.Unlock()
	if first {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	return true
}

func (q *delayQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// delayLoop sends delayed copies when they fall due.
func (r *Router) delayLoop(ctx context.Context, f *forward) {
	defer r.wg.Done()
	q := f.delayed
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return
		}
		now := mono.Now()
		wait := time.Hour
		for q.due.Len() > 0 {
			i := q.due.idx[0]
			s := &q.slots[i]
			if s.due > now {
				wait = time.Duration(s.due - now)
				break
			}
			heap.Pop(&q.due)
			// Sending under the lock keeps the slot from being reused mid-send;
			// the only other user is the forward's reader pushing the next copy.
			r.sendOn(r.uplinks[s.uplink], s.buf[:s.n])
			r.m.delayedSent.Inc()
			q.free = append(q.free, i)
		}
		q.mu.Unlock()
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-q.wake:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		case <-timer.C:
		}
	}
}
