package detect

import (
	"math/rand/v2"
	"testing"
)

// TestLRUMatchesModel drives the table and a map-plus-list model with the
// same random operations; any divergence in contents, recency or eviction
// count is a bug in probing, backward-shift deletion or the recency list.
func TestLRUMatchesModel(t *testing.T) {
	const capacity = 64
	// A weak hash makes long probe runs and wrap-around, the cases that
	// backward-shift deletion can get wrong.
	tab := newLRU[int, int](capacity, func(k int) uint64 { return uint64(k % 7) })
	model := map[int]int{}
	var order []int // most recent first
	touch := func(k int) {
		for i, x := range order {
			if x == k {
				order = append(order[:i], order[i+1:]...)
				break
			}
		}
		order = append([]int{k}, order...)
	}
	var evicted uint64
	rng := rand.New(rand.NewPCG(1, 2))
	for step := 0; step < 200000; step++ {
		k := rng.IntN(200)
		switch rng.IntN(4) {
		case 0, 1:
			v, created := tab.put(k)
			_, had := model[k]
			if created == had {
				t.Fatalf("step %d put(%d): created=%v, model had=%v", step, k, created, had)
			}
			if !had && len(model) == capacity {
				old := order[len(order)-1]
				order = order[:len(order)-1]
				delete(model, old)
				evicted++
			}
			*v = step
			model[k] = step
			touch(k)
		case 2:
			v, ok := tab.get(k)
			mv, mok := model[k]
			if ok != mok || ok && *v != mv {
				t.Fatalf("step %d get(%d) = %v,%v; model %v,%v", step, k, ok, v, mv, mok)
			}
			if ok {
				touch(k)
			}
		case 3:
			ok := tab.del(k)
			_, mok := model[k]
			if ok != mok {
				t.Fatalf("step %d del(%d) = %v; model %v", step, k, ok, mok)
			}
			if ok {
				delete(model, k)
				for i, x := range order {
					if x == k {
						order = append(order[:i], order[i+1:]...)
						break
					}
				}
			}
		}
		if tab.len() != len(model) || tab.evicted != evicted {
			t.Fatalf("step %d: len %d evicted %d; model %d %d", step, tab.len(), tab.evicted, len(model), evicted)
		}
	}
	i := 0
	tab.each(func(k int, v *int) bool {
		if order[i] != k {
			t.Fatalf("recency position %d: %d, model %d", i, k, order[i])
		}
		i++
		return true
	})
}

func TestLRUChurnAllocatesNothing(t *testing.T) {
	tab := newLRU[FiveTuple, adhocState](1024, func(f FiveTuple) uint64 { return hashFlow(7, f) })
	i := 0
	allocs := testing.AllocsPerRun(20000, func() {
		f := testFlow(i)
		tab.put(f)
		if i%3 == 0 {
			tab.del(testFlow(i - 500))
		}
		i++
	})
	if allocs != 0 {
		t.Fatalf("%v allocs per put/del", allocs)
	}
	if tab.evicted == 0 || tab.len() != 1024 {
		t.Fatalf("evicted %d len %d: want a full table that evicted", tab.evicted, tab.len())
	}
}
