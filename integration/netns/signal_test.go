package netns

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSignalTeardown runs a child that builds a Net and blocks, sends it SIGTERM
// and checks that its namespaces are gone.
func TestSignalTeardown(t *testing.T) {
	if os.Getenv("RAIC_NETNS_CHILD") == "1" {
		n, err := New()
		if err != nil {
			os.Exit(3)
		}
		h, err := n.AddHost("victim")
		if err != nil {
			os.Exit(4)
		}
		os.Stdout.WriteString("NS " + h.NS + "\n")
		time.Sleep(time.Minute)
		os.Exit(5) // not reached when the signal handler works
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: network namespace tests need root")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSignalTeardown$")
	cmd.Env = append(os.Environ(), "RAIC_NETNS_CHILD=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	var ns string
	for sc.Scan() {
		if f, ok := strings.CutPrefix(sc.Text(), "NS "); ok {
			ns = f
			break
		}
	}
	if ns == "" {
		t.Fatal("child printed no namespace")
	}
	if _, err := os.Stat("/run/netns/" + ns); err != nil {
		t.Fatalf("child namespace %s missing: %v", ns, err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	err = cmd.Wait()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("child ended with %v, want death by SIGTERM", err)
	}
	if _, err := os.Stat("/run/netns/" + ns); err == nil {
		exec.Command("ip", "netns", "del", ns).Run()
		t.Fatalf("namespace %s survived SIGTERM", ns)
	}
}
