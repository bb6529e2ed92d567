package ingress

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/udp"
	"github.com/raicnet/raic/pkg/wire"
)

// TestPinWorkers runs an ingress of three workers with PinWorkers: each read
// loop must say it is pinned, worker i to the i-th CPU the process may use
// (modulo their count), and the process must have a thread whose affinity
// is that CPU alone. Without PinWorkers none is pinned.
func TestPinWorkers(t *testing.T) {
	cpus, err := allowedCPUs()
	if err != nil || len(cpus) == 0 {
		t.Fatalf("allowedCPUs = %v, %v", cpus, err)
	}
	b := newBedWith(t, func(c *Config) { c.Workers, c.PinWorkers = 3, true })
	go b.in.Run()
	var got []int
	deadline := time.Now().Add(5 * time.Second)
	for {
		got = b.in.PinnedCPUs()
		if !contains(got, -1) || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i, c := range got {
		if want := cpus[i%len(cpus)]; c != want {
			t.Fatalf("worker %d pinned to CPU %d, want %d (CPUs %v; all: %v)", i, c, want, cpus, got)
		}
	}
	single := threadsOnOneCPU(t)
	for i, c := range got {
		if single[c] == 0 {
			t.Errorf("worker %d says CPU %d, but no thread of the process runs on that CPU alone (%v)", i, c, single)
		}
	}

	plain := newBedWith(t, func(c *Config) { c.Workers = 2 })
	go plain.in.Run()
	time.Sleep(20 * time.Millisecond)
	if p := plain.in.PinnedCPUs(); p[0] != -1 || p[1] != -1 {
		t.Errorf("without PinWorkers the workers say they are pinned: %v", p)
	}
}

func contains(xs []int, v int) bool {
	for _, x := range xs {
		if x == v {
			return true
		}
	}
	return false
}

// threadsOnOneCPU counts, by CPU, the process's threads allowed on that CPU
// only (Cpus_allowed_list of /proc/self/task/*/status).
func threadsOnOneCPU(t *testing.T) map[int]int {
	tasks, err := filepath.Glob("/proc/self/task/*/status")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]int{}
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread ended
		}
		for _, l := range strings.Split(string(b), "\n") {
			v, ok := strings.CutPrefix(l, "Cpus_allowed_list:")
			if !ok {
				continue
			}
			var c int
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d", &c); err == nil && strings.TrimSpace(v) == fmt.Sprint(c) {
				out[c]++
			}
		}
	}
	return out
}

// TestSteeringRefusedKeepsTheHash: where the kernel refuses the steering
// program, the ingress says so and serves all the same, the kernel's
// address hash spreading datagrams over the workers: a session opened
// through the listen address is answered.
func TestSteeringRefusedKeepsTheHash(t *testing.T) {
	refuse := func(*udp.Conn, uint32, int) error {
		return errors.New("setsockopt SO_ATTACH_REUSEPORT_CBPF: operation not permitted")
	}
	saved := steer
	steer = refuse
	t.Cleanup(func() { steer = saved })
	var logged testkit.LogBuffer
	b := newBedWith(t, func(c *Config) {
		c.Workers, c.SteerBySession = 2, true
		c.Log = slog.New(slog.NewTextHandler(&logged, nil))
	})
	if !strings.Contains(logged.String(), "workers not steered by session ID") || !strings.Contains(logged.String(), "operation not permitted") {
		t.Fatalf("the refusal is not logged with its error:\n%s", logged.String())
	}
	go b.in.Run()
	snd := routerSender(t, b.key, "gamer")
	if _, err := b.router.WriteToUDPAddrPort(sealData(t, snd, []byte("first")), b.in.Addr()); err != nil {
		t.Fatal(err)
	}
	if typ := b.answer(t); typ != wire.TypeAck {
		t.Fatalf("answer %v, want an ack", typ)
	}
}
