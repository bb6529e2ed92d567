package detect

import "testing"

func TestAppLookupMostSpecificWins(t *testing.T) {
	tab := NewAppTable(mustShipped(t))
	cases := []struct {
		proto uint8
		port  uint16
		want  string
	}{
		{ProtoUDP, 27015, "cs2"},
		{ProtoUDP, 27050, "cs2"},
		{ProtoUDP, 27033, "steam-remote-play"}, // 6 ports inside cs2's 36
		{ProtoUDP, 27051, "overwatch"},         // cs2 ended; overwatch's wide range
		{ProtoUDP, 5000, "lol"},
		{ProtoUDP, 5060, "sip"}, // 1 port beats lol's 501
		{ProtoUDP, 7050, "valorant"},
		{ProtoUDP, 7500, "pubg"},          // 921 ports beat valorant's 1001
		{ProtoUDP, 7080, "pubg"},          // 921 ports beat valorant's 1001
		{ProtoUDP, 8500, "rocket-league"}, // only range left
		{ProtoUDP, 9000, "fortnite"},      // 101 beats rocket-league's 2001
		{ProtoUDP, 9050, "fortnite"},
		{ProtoUDP, 3074, "xbox-live"}, // 1 port beats cod's 6
		{ProtoUDP, 3075, "cod"},
		{ProtoUDP, 3478, "stun-turn"},
		{ProtoUDP, 3479, "playstation"}, // 2 beats teams' 4 and facetime's 20
		{ProtoUDP, 3481, "teams"},
		{ProtoUDP, 3490, "facetime"},
		{ProtoUDP, 19132, "minecraft-bedrock"},
		{ProtoTCP, 25565, "minecraft-java"},
		{ProtoUDP, 25565, "rtp"}, // minecraft-java is TCP only
		{ProtoUDP, 8805, "zoom"},
		{ProtoUDP, 61456, "gta-online"},
		{ProtoUDP, 50001, "discord-voice"},
		{ProtoTCP, 64738, "mumble"},
		{ProtoUDP, 64738, "mumble"},
		{ProtoUDP, 9987, "teamspeak"},
		{ProtoUDP, 38000, "apex"},
		{ProtoTCP, 55030, "ffxiv"},
	}
	for _, tc := range cases {
		a, ok := tab.Lookup(tc.proto, tc.port, 50000)
		if !ok || a.Name != tc.want {
			got := "<none>"
			if ok {
				got = a.Name
			}
			t.Errorf("proto %d port %d: %s, want %s", tc.proto, tc.port, got, tc.want)
		}
	}
	for _, port := range []uint16{0, 1, 443, 53, 1000} {
		if a, ok := tab.Lookup(ProtoUDP, port, 50000); ok {
			t.Errorf("udp %d matched %q, want nothing", port, a.Name)
		}
	}
	if _, ok := tab.Lookup(1, 27015, 1); ok {
		t.Errorf("ICMP matched a port table")
	}
}

func TestAppLookupTieBreaks(t *testing.T) {
	c, err := ParseConfig("t.toml", []byte(`
[[app]]
name = "zeta"
type = "shooter"
proto = "udp"
server_ports = ["6000-6009"]

[[app]]
name = "alpha"
type = "shooter"
proto = "udp"
server_ports = ["6000-6009"]

[[app]]
name = "wide-client"
type = "moba"
proto = "udp"
server_ports = ["6000-6009"]
client_ports = ["1000-1999"]

[[app]]
name = "narrow-client"
type = "moba"
proto = "udp"
server_ports = ["6000-6009"]
client_ports = ["1500-1509"]
`))
	if err != nil {
		t.Fatal(err)
	}
	// Same result whatever the entry order: build from both orders.
	rev := &Config{}
	for i := len(c.Apps) - 1; i >= 0; i-- {
		rev.Apps = append(rev.Apps, c.Apps[i])
	}
	for _, cfg := range []*Config{c, rev} {
		tab := NewAppTable(cfg)
		for src, want := range map[uint16]string{1505: "narrow-client", 1600: "wide-client", 3000: "alpha"} {
			if a, ok := tab.Lookup(ProtoUDP, 6005, src); !ok || a.Name != want {
				t.Errorf("src %d: %+v, want %s", src, a, want)
			}
		}
	}
}

func TestAppLookupAllocatesNothing(t *testing.T) {
	tab := NewAppTable(mustShipped(t))
	if n := testing.AllocsPerRun(1000, func() { tab.Lookup(ProtoUDP, 27015, 50000) }); n != 0 {
		t.Fatalf("%v allocs", n)
	}
}

func BenchmarkAppLookup(b *testing.B) {
	tab := NewAppTable(mustShipped(b))
	ports := []uint16{27015, 7500, 3478, 443, 50001, 9000}
	for i := 0; b.Loop(); i++ {
		tab.lookup(ProtoUDP, ports[i%len(ports)], 50000)
	}
}
