//go:build linux

package bpf

import (
	"testing"

	"github.com/raicnet/raic/suppress"
)

// TestEnforcerDrivesSuppressEgress: what suppress.Runtime writes through the
// Enforcer is what suppress_egress applies, and what it reads back is what the
// program counted.
func TestEnforcerDrivesSuppressEgress(t *testing.T) {
	d := loadForTest(t)
	e, err := NewEnforcer(d)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if ix, err := e.Ifindex("lo"); err != nil || ix != loIfindex {
		t.Fatalf("Ifindex(lo) = %d, %v", ix, err)
	}
	if _, _, err := e.DeviceBytes(loIfindex); err != nil {
		t.Fatalf("DeviceBytes: %v", err)
	}
	pkt := buildPacket(bulkSrc, bulkDst, pktOpts{payload: 200})
	if err := e.SetEgress(loIfindex, suppress.EgressConfig{Enabled: true, DropFraction: 1, LCMark: lcMark, LCMask: 0xffff}); err != nil {
		t.Fatal(err)
	}
	if r := runProg(t, d.objs.SuppressEgress, pkt, 0); r.verdict != verdictShot {
		t.Fatalf("bulk packet at drop fraction 1: verdict %#x", r.verdict)
	}
	if r := runProg(t, d.objs.SuppressEgress, pkt, lcMark); r.verdict != verdictPass {
		t.Fatalf("marked packet: verdict %#x", r.verdict)
	}
	// A promoted flow passes, both ways; demoted, it is bulk again.
	f := suppress.Flow{Src: bulkSrc, Dst: bulkDst}
	if err := e.Promote(f); err != nil {
		t.Fatal(err)
	}
	back := buildPacket(bulkDst, bulkSrc, pktOpts{payload: 200})
	for _, p := range [][]byte{pkt, back} {
		if r := runProg(t, d.objs.SuppressEgress, p, 0); r.verdict != verdictPass {
			t.Fatalf("promoted flow: verdict %#x", r.verdict)
		}
	}
	if err := e.Demote(f); err != nil {
		t.Fatal(err)
	}
	if err := e.Demote(f); err != nil {
		t.Fatalf("demoting a flow twice: %v", err)
	}
	if r := runProg(t, d.objs.SuppressEgress, pkt, 0); r.verdict != verdictShot {
		t.Fatalf("demoted flow: verdict %#x", r.verdict)
	}
	c, err := e.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c.DroppedFraction != 2 || c.LCPassed != 3 {
		t.Errorf("counters %+v, want 2 fraction drops and 3 LC passes", c)
	}
	flows := 0
	if err := e.BulkFlows(func(b suppress.BulkFlow) bool { flows++; return b.LastSeen > 0 }); err != nil || flows != 1 {
		t.Errorf("bulk flows: %d, %v", flows, err)
	}
	if err := e.DeleteEgress(loIfindex); err != nil {
		t.Fatal(err)
	}
	if r := runProg(t, d.objs.SuppressEgress, pkt, 0); r.verdict != verdictPass {
		t.Fatalf("after DeleteEgress: verdict %#x", r.verdict)
	}
}
