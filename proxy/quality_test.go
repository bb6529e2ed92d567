package proxy

import (
	"strings"
	"testing"
	"time"
)

// TestConfigReportInterval: report_interval defaults to 1 s, "0s" turns the
// reports off, and values outside 100ms..10s are refused with line and key.
func TestConfigReportInterval(t *testing.T) {
	base := "listen = \"127.0.0.1:0\"\n"
	c, err := ParseConfig("p.toml", base+proxyClient())
	if err != nil || c.ReportInterval.Duration != time.Second {
		t.Fatalf("default: %v %v", c, err)
	}
	if c, err = ParseConfig("p.toml", base+"report_interval = \"0s\"\n"+proxyClient()); err != nil || reportInterval(c.ReportInterval.Duration) >= 0 {
		t.Fatalf("0s: %v", err)
	}
	for _, bad := range []string{"10ms", "1m"} {
		_, err := ParseConfig("p.toml", base+"report_interval = \""+bad+"\"\n"+proxyClient())
		if err == nil || !strings.Contains(err.Error(), "p.toml:2: report_interval:") {
			t.Fatalf("%s: %v", bad, err)
		}
	}
}
