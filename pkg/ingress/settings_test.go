package ingress

import (
	"strings"
	"testing"

	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/wire"
)

type settingsConfig struct {
	Settings
	Extra int `toml:"extra"`
}

func (c *settingsConfig) check(m *config.Meta) {
	c.Settings.Check(m, "the test", false)
	m.Int("extra", c.Extra, 0, 9)
}

// Embedded, the settings decode at the top level over their defaults, are
// checked at their lines, and sit beside the program's own keys and the
// unknown-key reports.
func TestSettingsEmbedded(t *testing.T) {
	_, parse := config.Loaders(func() settingsConfig { return settingsConfig{Settings: DefaultSettings()} }, (*settingsConfig).check)
	c, err := parse("p.toml", "max_sessions = 7\nextra = 3\n[[client]]\nid = \"gamer\"\nkey = \""+wire.Key{1}.String()+"\"\nallow = [\"198.18.0.1:1\"]\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxSessions != 7 || c.Extra != 3 || c.Listen != DefaultListen || c.LogLevel != config.DefaultLogLevel ||
		c.SessionIdle.Duration != DefaultSessionIdle || c.ReplyWindow.Duration != DefaultReplyWindow {
		t.Errorf("decoded %+v", c)
	}
	text := "listen = \"nowhere\"\nlog_level = \"loud\"\nmetrics = \"x\"\nmax_sessions = 0\nextra = 10\nlisen = 1\nreply_window = \"1ms\"\n[[client]]\nid = \"\"\n"
	_, err = parse("p.toml", text)
	if err == nil {
		t.Fatal("a bad file passed")
	}
	for _, want := range []string{"p.toml:1: listen:", "p.toml:2: log_level:", "p.toml:3: metrics:", "p.toml:4: max_sessions:",
		"p.toml:5: extra:", "p.toml:6: lisen:", "p.toml:7: reply_window:", "p.toml:9: client.0.id:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("errors lack %q:\n%v", want, err)
		}
	}
}
