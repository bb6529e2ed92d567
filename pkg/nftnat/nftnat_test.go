package nftnat

import (
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	vnetns "github.com/vishvananda/netns"
)

// newNS makes a fresh network namespace and returns its fd (closed at the
// end of the test); the calling thread stays where it was.
func newNS(t *testing.T) int {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	type res struct {
		h   vnetns.NsHandle
		err error
	}
	ch := make(chan res)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			ch <- res{err: err}
			return
		}
		defer orig.Close()
		h, err := vnetns.New() // also moves this thread into it
		if err == nil && vnetns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		ch <- res{h, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.h.Close() })
	return int(r.h)
}

// TestMasqueradeTable installs, replaces and deletes the table in a fresh
// namespace, reads it back over netlink and, where nft is installed, checks
// that nft reads the same rules as the shell syntax the router used before.
func TestMasqueradeTable(t *testing.T) {
	fd := newNS(t)
	const table = "raic_test"
	if err := Masquerade(fd, table, []string{"up0", "up1"}, &Keep{Iif: "lan0", Mark: 0x10000}); err != nil {
		t.Fatal(err)
	}
	masq, ok, err := Rules(fd, table)
	if err != nil || !ok {
		t.Fatalf("Rules: %v, %v", ok, err)
	}
	if masq["postrouting"] != 2 || masq["prerouting"] != 0 || len(masq) != 2 {
		t.Errorf("masquerade statements per chain %v, want postrouting 2, prerouting 0", masq)
	}
	if _, err := exec.LookPath("nsenter"); err == nil {
		f := os.NewFile(uintptr(fd), "ns")
		cmd := exec.Command("nsenter", "--net=/proc/self/fd/3", "nft", "list", "table", "ip", table)
		cmd.ExtraFiles = []*os.File{f}
		if out, err := cmd.CombinedOutput(); err == nil {
			s := string(out)
			t.Logf("nft reads:\n%s", s)
			for _, want := range []string{
				"type nat hook postrouting priority srcnat; policy accept;",
				`oifname "up0" masquerade`, `oifname "up1" masquerade`,
				"type filter hook prerouting priority mangle; policy accept;",
				`iifname "lan0" ct status snat meta mark set meta mark | 0x00010000`,
			} {
				if !strings.Contains(s, want) {
					t.Errorf("nft list lacks %q", want)
				}
			}
		} else if _, lerr := exec.LookPath("nft"); lerr == nil {
			t.Errorf("nft list: %v: %s", err, out)
		}
	}
	// Installing again replaces the table (one device now, no keep chain).
	if err := Masquerade(fd, table, []string{"up0"}, nil); err != nil {
		t.Fatal(err)
	}
	if masq, _, _ := Rules(fd, table); masq["postrouting"] != 1 || len(masq) != 1 {
		t.Errorf("after replacing: %v, want postrouting 1 only", masq)
	}
	for range 2 { // deleting twice is fine
		if err := Delete(fd, table); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok, err := Rules(fd, table); ok || err != nil {
		t.Errorf("table still there after Delete (%v)", err)
	}
}
