package testbed

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/proxy"
)

// The proxy cannot run in-process the way the router does: it opens a socket
// per session towards the game server when the session's first datagram
// arrives, on whatever OS thread its receive goroutine happens to run, and
// only the thread inside netns.Host.Do is in the proxy's namespace. A socket
// opened elsewhere would sit in the namespace the program started in, where the
// game server is unreachable. So the proxy runs as a child process started
// inside the namespace: the program re-executes itself with proxyEnv holding
// the proxy's configuration, and ProxyChild, called first thing in main (or
// TestMain), turns that process into the proxy.
const proxyEnv = "RAIC_TESTBED_PROXY_CONFIG"

// ProxyChild returns at once, unless this process was started by the testbed
// as its proxy: then it runs the proxy until its standard input closes (the
// parent ended it or died) or it gets SIGTERM, and exits. Programs and test
// binaries that use the testbed call it before anything else.
func ProxyChild() {
	text, ok := os.LookupEnv(proxyEnv)
	if !ok {
		return
	}
	if err := runProxyChild(text); err != nil {
		fmt.Fprintln(os.Stderr, "testbed proxy:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runProxyChild(text string) error {
	cfg, err := proxy.ParseConfig("testbed-proxy.toml", text)
	if err != nil {
		return err
	}
	p, err := proxy.New(cfg, Logger())
	if err != nil {
		return err
	}
	// The first line of output tells the parent where the proxy listens.
	fmt.Println(p.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	return p.Run(ctx)
}

// proxyProcess is a running proxy child.
type proxyProcess struct {
	cmd   *exec.Cmd
	stdin io.Closer
	addr  netip.AddrPort
	done  chan struct{}
}

// startProxyProcess runs the testbed's proxy in g's proxy namespace, listening
// on the proxy address, for the client "gamer" towards the game server host.
func startProxyProcess(g *netns.Game) (*proxyProcess, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	text := fmt.Sprintf(`
listen = "%s"
[[client]]
id = "gamer"
key = "%s"
allow = ["%s"]
rate_pps = 1000000
burst = 100000
`, netip.AddrPortFrom(netns.ProxyAddr, 0), key, netns.ServerAddr)
	cmd := g.Proxy.Command(exe)
	cmd.Env = append(os.Environ(), proxyEnv+"="+text)
	// No Pdeathsig: it fires when the forking OS thread exits, not the
	// process, and Go retires threads. A parent that dies closes the child's
	// standard input, which ends it, and removing the namespaces kills
	// whatever is left in them.
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the proxy: %w", err)
	}
	pp := &proxyProcess{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() { cmd.Wait(); close(pp.done) }()
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
		io.Copy(io.Discard, stdout)
	}()
	select {
	case l, ok := <-line:
		if ok {
			pp.addr, err = netip.ParseAddrPort(strings.TrimSpace(l))
		} else {
			err = errors.New("the proxy exited before it listened")
		}
	case <-time.After(10 * time.Second):
		err = errors.New("the proxy did not start within 10 s")
	}
	if err != nil {
		pp.close()
		return nil, err
	}
	return pp, nil
}

// close ends the child: closing its standard input asks it to stop, a kill
// follows if it does not.
func (pp *proxyProcess) close() {
	pp.stdin.Close()
	select {
	case <-pp.done:
	case <-time.After(3 * time.Second):
		pp.cmd.Process.Kill()
		<-pp.done
	}
}
