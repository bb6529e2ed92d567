package udp

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// recvTOS reads one datagram from uc (IP_RECVTOS or IPV6_RECVTCLASS on) and
// returns the TOS byte the kernel reports for it.
func recvTOS(t *testing.T, uc *net.UDPConn, v6 bool) int {
	t.Helper()
	rc, _ := uc.SyscallConn()
	rc.Control(func(fd uintptr) {
		unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1)
		if v6 {
			unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVTCLASS, 1)
		}
	})
	uc.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf, oob := make([]byte, 2048), make([]byte, 256)
	_, oobn, _, _, err := uc.ReadMsgUDP(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if (m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TOS) ||
			(m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_TCLASS) {
			if len(m.Data) == 1 {
				return int(m.Data[0])
			}
			return int(int32(uint32(m.Data[0]) | uint32(m.Data[1])<<8 | uint32(m.Data[2])<<16 | uint32(m.Data[3])<<24))
		}
	}
	t.Fatal("no TOS control message")
	return -1
}

// TestWriteToTOS: a datagram sent with WriteToTOS carries that TOS, the next
// plain one the socket's own (0), on an IPv4 and on a dual-stack socket, and
// WriteToTOS does not allocate.
func TestWriteToTOS(t *testing.T) {
	for _, network := range []string{"udp4", "udp"} {
		t.Run(network, func(t *testing.T) {
			local := lo4
			if network == "udp" {
				local = netip.AddrPort{}
			}
			snd := listen(t, network, Options{Local: local})
			rcv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer rcv.Close()
			to := rcv.LocalAddr().(*net.UDPAddr).AddrPort()
			const ef = 46 << 2
			if err := snd.WriteToTOS([]byte("marked"), to, ef); err != nil {
				t.Fatal(err)
			}
			if got := recvTOS(t, rcv, false); got != ef {
				t.Errorf("TOS %#x, want %#x (EF)", got, ef)
			}
			if err := snd.WriteTo([]byte("plain"), to); err != nil {
				t.Fatal(err)
			}
			if got := recvTOS(t, rcv, false); got != 0 {
				t.Errorf("TOS %#x after an unmarked send, want 0", got)
			}
			one := []byte("x")
			if a := testing.AllocsPerRun(100, func() { snd.WriteToTOS(one, to, ef) }); a != 0 {
				t.Errorf("WriteToTOS: %v allocs, want 0", a)
			}
		})
	}
}
