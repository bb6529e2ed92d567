package ingress

import (
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Pinning a worker's read loop (Config.PinWorkers) gives it a thread of its
// own on a CPU of its own. Unpinned, the Go scheduler and the kernel move the
// loops between threads and CPUs, and two loops now and then share a CPU
// while the other idles. On two CPUs the drain test (capbench -drain)
// measured 1.69–1.76× one worker's rate with two unpinned workers and
// 1.88–2.09× pinned (README, "Where the targets stand").

// allowedCPUs is the CPUs this process may run on, in order.
func allowedCPUs() ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, os.NewSyscallError("sched_getaffinity", err)
	}
	var cpus []int
	for c := 0; c < len(set)*64 && len(cpus) < set.Count(); c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}

// pinThread locks the calling goroutine to its thread and that thread to
// cpu. On error the goroutine is unlocked again and runs where it did. A
// goroutine that returns still pinned takes its thread with it (the runtime
// ends a locked thread), so no other goroutine inherits the narrow affinity.
func pinThread(cpu int) error {
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		runtime.UnlockOSThread()
		return os.NewSyscallError("sched_setaffinity", err)
	}
	return nil
}
