// Package tcpmux is the persistent, authenticated connection between a router
// and its proxy that carries TCP flows (package tcpsplit) and, when UDP cannot
// reach the proxy, the suite's sealed datagrams.
//
// Two transports share one authentication:
//
//   - QUIC (quic-go) over UDP: many flows as QUIC streams on one connection per
//     router uplink, each stream with its own flow-control window, so a download
//     filling its window never holds back a game's stream; no head-of-line
//     blocking between flows on loss; kept warm by QUIC keepalives.
//   - TLS over TCP (FrameConn): the fallback for networks that drop UDP (hotel,
//     campus, office). It carries length-prefixed datagrams only.
//
// Authentication. The proxy's certificate is ephemeral and not checked: the
// pre-shared client key is what both sides prove. After the TLS 1.3 handshake
// each side derives 32 bytes of keying material bound to that very handshake
// (RFC 5705 exporter); the router sends its client ID and HMAC-SHA256(key,
// "client" || ekm), the proxy answers HMAC-SHA256(key, "proxy" || ekm). A man
// in the middle terminates two handshakes with different exporters and cannot
// compute either proof without the key, so neither side talks to anyone who
// does not hold it.
//
// A router admitted by a connect token (package token) has no pre-shared key
// at the proxy: on either transport it sends its token in place of the client
// ID (marker byte 0xff, the token's length, the token) and proves the client
// key sealed inside it; the proxy opens the token (TokenLookup: forged,
// expired and not yet valid tokens are refused there) and checks the proof
// with that key, and the accepted connection keeps the token (Conn.Token,
// FrameConn.Token). The datagrams a fallback connection then carries are
// admitted one session at a time as over UDP, by the token in their hellos;
// the TCP flows of a QUIC connection, one at a time by the token's servers
// (package tcpsplit).
package tcpmux

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"time"

	"github.com/raicnet/raic/pkg/wire"
)

// ALPN names the protocol in both transports' TLS handshakes.
const ALPN = "raic-tcp/1"

const (
	exporterLabel = "EXPORTER-raic-tcpmux"
	proofLen      = sha256.Size
	// AuthTimeout bounds how long an unauthenticated peer may hold a
	// connection open: the TLS handshake and the key proofs together.
	AuthTimeout = 5 * time.Second
)

// ErrAuth is returned when a peer does not prove it holds the client key.
var ErrAuth = errors.New("tcpmux: authentication failed")

// KeyLookup returns the pre-shared key of a client ID, if it is known.
type KeyLookup func(clientID string) (wire.Key, bool)

// TokenLookup opens a connect token a router presents in place of a client
// ID: the client ID and key inside it, or why it is refused (Authenticate
// returns that error).
type TokenLookup func(tok []byte) (clientID string, key wire.Key, err error)

// tokenMarker, in the place of the client ID's length, says a connect token
// follows (a client ID is at most wire.MaxClientID bytes).
const tokenMarker = 0xff

// ServerTLS returns the proxy's TLS configuration with a fresh self-signed
// certificate (the key proofs, not the certificate, authenticate).
func ServerTLS() (*tls.Config, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		DNSNames:     []string{"raic-proxy"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}},
		NextProtos:   []string{ALPN},
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// ClientTLS is the router's TLS configuration. The certificate is not
// verified on purpose: the proxy's key proof is (see the package comment).
func ClientTLS() *tls.Config {
	return &tls.Config{
		InsecureSkipVerify: true, // authenticated by the PSK proof bound to the handshake
		NextProtos:         []string{ALPN},
		MinVersion:         tls.VersionTLS13,
		ServerName:         "raic-proxy",
	}
}

func proof(key wire.Key, role string, ekm []byte) []byte {
	m := hmac.New(sha256.New, key[:])
	m.Write([]byte(role))
	m.Write(ekm)
	return m.Sum(nil)
}

func exporter(cs tls.ConnectionState) ([]byte, error) {
	return cs.ExportKeyingMaterial(exporterLabel, nil, 32)
}

// clientAuth writes the router's proof on rw, after its client ID or, when
// tok is set, its connect token, and checks the proxy's answer.
func clientAuth(rw io.ReadWriter, cs tls.ConnectionState, clientID string, tok []byte, key wire.Key) error {
	var msg []byte
	switch {
	case len(tok) > 0:
		if len(tok) > wire.MaxToken {
			return fmt.Errorf("tcpmux: a token is at most %d bytes", wire.MaxToken)
		}
		msg = append([]byte{tokenMarker, byte(len(tok))}, tok...)
	case len(clientID) == 0 || len(clientID) > wire.MaxClientID:
		return fmt.Errorf("tcpmux: client ID must be 1 to %d bytes", wire.MaxClientID)
	default:
		msg = append([]byte{byte(len(clientID))}, clientID...)
	}
	ekm, err := exporter(cs)
	if err != nil {
		return err
	}
	msg = append(msg, proof(key, "client", ekm)...)
	if _, err := rw.Write(msg); err != nil {
		return err
	}
	var ans [proofLen]byte
	if _, err := io.ReadFull(rw, ans[:]); err != nil {
		return fmt.Errorf("%w: no answer from the proxy: %v", ErrAuth, err)
	}
	if !hmac.Equal(ans[:], proof(key, "proxy", ekm)) {
		return fmt.Errorf("%w: the proxy does not hold our key", ErrAuth)
	}
	return nil
}

// serverAuth reads a router's proof from rw, checks it against the client's
// key (from keys, or from the connect token it sent when tokens is set) and
// answers with the proxy's proof. It returns the client ID and, for a router
// admitted by a connect token, the token (nil for a pre-shared key). A
// refused peer gets no answer.
func serverAuth(rw io.ReadWriter, cs tls.ConnectionState, keys KeyLookup, tokens TokenLookup) (id string, tok []byte, err error) {
	ekm, err := exporter(cs)
	if err != nil {
		return "", nil, err
	}
	var n [1]byte
	if _, err := io.ReadFull(rw, n[:]); err != nil {
		return "", nil, err
	}
	var key wire.Key
	var got []byte
	switch {
	case n[0] == tokenMarker && tokens != nil:
		if _, err := io.ReadFull(rw, n[:]); err != nil {
			return "", nil, err
		}
		if n[0] == 0 || int(n[0]) > wire.MaxToken {
			return "", nil, ErrAuth
		}
		buf := make([]byte, int(n[0])+proofLen)
		if _, err := io.ReadFull(rw, buf); err != nil {
			return "", nil, err
		}
		tok = buf[:n[0]:n[0]]
		if id, key, err = tokens(tok); err != nil {
			return "", nil, err
		}
		got = buf[n[0]:]
	case n[0] == 0 || int(n[0]) > wire.MaxClientID:
		return "", nil, ErrAuth
	default:
		buf := make([]byte, int(n[0])+proofLen)
		if _, err := io.ReadFull(rw, buf); err != nil {
			return "", nil, err
		}
		id = string(buf[:n[0]])
		var ok bool
		if key, ok = keys(id); !ok {
			return "", nil, ErrAuth
		}
		got = buf[n[0]:]
	}
	if !hmac.Equal(got, proof(key, "client", ekm)) {
		return "", nil, ErrAuth
	}
	if _, err := rw.Write(proof(key, "proxy", ekm)); err != nil {
		return "", nil, err
	}
	return id, tok, nil
}
