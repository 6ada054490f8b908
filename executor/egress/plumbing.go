package egress

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
)

type (
	recordKey     struct{}
	clientConnKey struct{}
)

func recordFrom(ctx context.Context) *record {
	rec, _ := ctx.Value(recordKey{}).(*record)
	return rec
}

// muxListener is the one listener the server serves: each session's accept
// loop delivers the job's connections to it.
type muxListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newMuxListener() *muxListener {
	return &muxListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (m *muxListener) Accept() (net.Conn, error) {
	select {
	case c := <-m.ch:
		return c, nil
	case <-m.done:
		return nil, net.ErrClosed
	}
}

func (m *muxListener) Close() error {
	m.once.Do(func() { close(m.done) })
	return nil
}

func (m *muxListener) Addr() net.Addr { return muxAddr{} }

// deliver hands c to the server; false if the listener or the session
// (cancel) closed first.
func (m *muxListener) deliver(c net.Conn, cancel <-chan struct{}) bool {
	select {
	case m.ch <- c:
		return true
	case <-m.done:
		return false
	case <-cancel:
		return false
	}
}

type muxAddr struct{}

func (muxAddr) Network() string { return "egress" }
func (muxAddr) String() string  { return "egress-sessions" }

type nopCloser struct{ io.Reader }

func (nopCloser) Close() error { return nil }

// newLogrusBridge makes the logrus logger smokescreen logs through: nothing
// reaches stderr; entries go to logger at debug level, and are not even
// formatted when debug is off.
func newLogrusBridge(logger *slog.Logger) *logrus.Logger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.PanicLevel)
	if logger.Enabled(context.Background(), slog.LevelDebug) {
		l.SetLevel(logrus.DebugLevel)
		l.AddHook(logrusHook{logger})
	}
	return l
}

type logrusHook struct{ log *slog.Logger }

func (logrusHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h logrusHook) Fire(e *logrus.Entry) error {
	args := make([]any, 0, 2*len(e.Data)+2)
	args = append(args, "level", e.Level.String())
	for k, v := range e.Data {
		args = append(args, k, v)
	}
	h.log.Debug("smokescreen: "+e.Message, args...)
	return nil
}

// logWriter is an io.Writer for a standard library logger, such as
// goproxy's, that logs each line at debug level.
type logWriter struct {
	log *slog.Logger
	msg string
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.log.Debug(w.msg, "detail", strings.TrimSpace(string(p)))
	return len(p), nil
}
