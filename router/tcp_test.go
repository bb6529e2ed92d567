package router

import (
	"strings"
	"testing"
)

const tcpBase = `
client_id = "gamer"
key = "0102030405060708090a0b0c0d0e0f100102030405060708090a0b0c0d0e0f10"
proxy = "198.18.40.2:7000"
[[uplink]]
name = "isp0"
source = "198.18.10.2"
`

func TestTCPConfig(t *testing.T) {
	c, err := ParseConfig("router.toml", tcpBase+`
[tcp]
proxy = "198.18.40.2:443"
fallback = true
[[tcp.forward]]
listen = "127.0.0.1:8080"
server = "198.18.41.2:80"
compress = true
[tcp.split]
lan = "lan0"
ports = [9000, 27015]
apps = ["ffxiv", "mumble"]
to = ["198.18.41.0/24", "198.18.42.2"]
duplicate = true
`)
	if err != nil {
		t.Fatal(err)
	}
	// TCP forwards alone are something to carry: no [[forward]] needed.
	if !c.TCP.Fallback || len(c.TCP.Forwards) != 1 || !c.TCP.Forwards[0].Compress {
		t.Errorf("tcp = %+v", c.TCP)
	}
	if c.TCP.Split.ListenPort != DefaultSplitPort || len(c.TCP.Split.to) != 2 || c.TCP.Split.to[1].Bits() != 32 {
		t.Errorf("tcp.split = %+v", c.TCP.Split)
	}
	if got, want := strings.Join(c.TCP.Split.ports, ","), "9000,27015,54992-54994,55006-55007,55021-55040,64738"; got != want {
		t.Errorf("split ports %s, want %s", got, want)
	}
	for _, tc := range []struct{ text, want string }{
		{"[tcp]\nproxy = \"198.18.40.2:443\"\n[tcp.split]\nlan = \"lan0\"\napps = [\"nosuchgame\"]\n", `tcp.split.apps: no app "nosuchgame"`},
		{"[tcp]\nproxy = \"198.18.40.2:443\"\n[tcp.split]\nlan = \"lan0\"\napps = [\"gta-online\"]\n", `app "gta-online" uses no TCP`},
		{"[tcp]\nfallback = true\n", "router.toml:9: tcp.fallback: needs tcp.proxy"},
		{"[tcp]\nproxy = \"198.18.40.2\"\n", "tcp.proxy: not an address:port"},
		{"[tcp]\nproxy = \"198.18.40.2:443\"\n[[tcp.forward]]\nlisten = \"x\"\nserver = \"198.18.41.2:80\"\n", "tcp.forward.0.listen"},
		{"[tcp]\nproxy = \"198.18.40.2:443\"\n[tcp.split]\nports = [80]\n", "tcp.split.lan"},
		{"[tcp]\nproxy = \"198.18.40.2:443\"\n[tcp.split]\nlan = \"lan0\"\nports = [0]\n", "tcp.split.ports: port 0"},
		{"[tcp]\nproxy = \"198.18.40.2:443\"\n[tcp.split]\nlan = \"lan0\"\nports = [80]\nto = [\"2001:db8::/32\"]\n", "tcp.split.to"},
		{"[tcp]\nproxy = \"198.18.40.2:443\"\nsplit_ports = 3\n", `tcp.split_ports: unknown key`},
	} {
		_, err := ParseConfig("router.toml", tcpBase+tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to contain %q", tc.text, err, tc.want)
		}
	}
}
