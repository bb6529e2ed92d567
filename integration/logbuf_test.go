package integration

import (
	"bytes"
	"sync"
)

// lockedBuffer collects a program's output (its stderr, as an io.Writer)
// while the test reads it (logText).
type lockedBuffer struct {
	mu  sync.Mutex
	log bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.log.Write(p)
}

func (l *lockedBuffer) logText() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.log.String()
}
