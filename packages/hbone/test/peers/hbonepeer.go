// hbonepeer: an HBONE peer written only with Go's standard library (net/http's bundled HTTP/2),
// used by Weir's interop tests and benchmarks as an implementation no one here wrote.
//
//	-mode server        HTTP/2 CONNECT server (mTLS, TLS 1.3, h2) that dials :authority
//	-mode client-check  N concurrent tunnels through -peer to -target (an echo), checksums compared
//	-mode client-front  TCP listener; each accepted connection becomes a tunnel to -target via -peer
//	-mode open-latency  warm session (one tunnel held open), prints OPEN-READY, then serves commands
//	                    on stdin: "round N" opens N tunnels one at a time on it, closing each gracefully,
//	                    and prints ROUND [ms, …] (CONNECT sent → 200 received); "churn N" opens and
//	                    closes N tunnels 8 at a time and prints CHURN-DONE N (CPU is read from outside)
package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

var (
	mode    = flag.String("mode", "", "server | client-check | client-front | open-latency")
	listen  = flag.String("listen", "127.0.0.1:0", "listen address (server, client-front)")
	peer    = flag.String("peer", "", "HBONE peer ip:port")
	target  = flag.String("target", "", "tunnel target ip:port (the :authority)")
	certF   = flag.String("cert", "", "certificate chain PEM")
	keyF    = flag.String("key", "", "private key PEM")
	caF     = flag.String("ca", "", "trust bundle PEM")
	expect  = flag.String("expect", "", "expected peer SPIFFE identity (client modes)")
	streams = flag.Int("streams", 4, "concurrent tunnels (client-check)")
	nbytes  = flag.Int("bytes", 1<<20, "bytes per tunnel (client-check)")
	warmup  = flag.Int("warmup", 0, "tunnel opens before measuring, on a session of their own (open-latency)")
)

func main() {
	flag.Parse()
	log.SetFlags(0)
	cert, err := tls.LoadX509KeyPair(*certF, *keyF)
	check(err)
	caPEM, err := os.ReadFile(*caF)
	check(err)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		log.Fatalf("no certificates in %s", *caF)
	}
	switch *mode {
	case "server":
		serve(cert, pool)
	case "client-check":
		clientCheck(transport(cert, pool))
	case "client-front":
		clientFront(transport(cert, pool))
	case "open-latency":
		for i, wtr := 0, transport(cert, pool); i < *warmup; i++ {
			t, err := open(wtr)
			check(err)
			t.w.Close()
			t.body.Close()
		}
		openLatency(transport(cert, pool))
	default:
		log.Fatalf("unknown -mode %q", *mode)
	}
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func serve(cert tls.Certificate, pool *x509.CertPool) {
	srv := &http.Server{
		Handler: http.HandlerFunc(handleConnect),
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
			MinVersion:   tls.VersionTLS13,
			NextProtos:   []string{"h2"},
		},
	}
	ln, err := net.Listen("tcp", *listen)
	check(err)
	fmt.Printf("LISTENING %s\n", ln.Addr())
	check(srv.ServeTLS(ln, "", ""))
}

func handleConnect(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	up, err := net.DialTimeout("tcp", r.Host, 10*time.Second)
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	defer up.Close()
	w.WriteHeader(http.StatusOK)
	fl := w.(http.Flusher)
	fl.Flush()
	done := make(chan struct{})
	go func() {
		io.Copy(up, r.Body)
		up.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	buf := make([]byte, 64*1024)
	for {
		n, err := up.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				break
			}
			fl.Flush()
		}
		if err != nil {
			break
		}
	}
	<-done
}

func transport(cert tls.Certificate, pool *x509.CertPool) *http.Transport {
	return &http.Transport{
		ForceAttemptHTTP2: true,
		TLSClientConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS13,
			NextProtos:   []string{"h2"},
			// Verified below: chain to the bundle, then the SPIFFE URI SAN (no hostname check).
			InsecureSkipVerify: true,
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				certs := make([]*x509.Certificate, len(raw))
				for i, b := range raw {
					c, err := x509.ParseCertificate(b)
					if err != nil {
						return err
					}
					certs[i] = c
				}
				inter := x509.NewCertPool()
				for _, c := range certs[1:] {
					inter.AddCert(c)
				}
				if _, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
					return err
				}
				for _, u := range certs[0].URIs {
					if u.String() == *expect {
						return nil
					}
				}
				return fmt.Errorf("peer identity %v is not %s", certs[0].URIs, *expect)
			},
		},
	}
}

type tunnel struct {
	w    *io.PipeWriter
	body io.ReadCloser
}

func open(tr *http.Transport) (*tunnel, error) {
	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodConnect, "https://"+*peer, pr)
	if err != nil {
		return nil, err
	}
	req.Host = *target
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	return &tunnel{w: pw, body: resp.Body}, nil
}

func clientCheck(tr *http.Transport) {
	var wg sync.WaitGroup
	errs := make([]error, *streams)
	for i := 0; i < *streams; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = echoOnce(tr)
		}(i)
	}
	wg.Wait()
	out := map[string]any{"ok": true, "streams": *streams, "bytes": *nbytes}
	for _, e := range errs {
		if e != nil {
			out["ok"] = false
			out["error"] = e.Error()
		}
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}

func echoOnce(tr *http.Transport) error {
	t, err := open(tr)
	if err != nil {
		return err
	}
	data := make([]byte, *nbytes)
	rand.Read(data)
	go func() {
		t.w.Write(data)
		t.w.Close() // END_STREAM: the echo ends its side after it
	}()
	got, err := io.ReadAll(t.body)
	if err != nil {
		return err
	}
	a, b := sha256.Sum256(data), sha256.Sum256(got)
	if !bytes.Equal(a[:], b[:]) {
		return errors.New("checksum mismatch: sent " + hex.EncodeToString(a[:]) + " got " + hex.EncodeToString(b[:]) + fmt.Sprintf(" (%d bytes)", len(got)))
	}
	return nil
}

func clientFront(tr *http.Transport) {
	ln, err := net.Listen("tcp", *listen)
	check(err)
	fmt.Printf("LISTENING %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		check(err)
		go func() {
			defer c.Close()
			t, err := open(tr)
			if err != nil {
				log.Print(err)
				return
			}
			go func() {
				io.Copy(t.w, c)
				t.w.Close()
			}()
			io.Copy(c, t.body)
			c.(*net.TCPConn).CloseWrite()
		}()
	}
}

func openLatency(tr *http.Transport) {
	warm, err := open(tr)
	check(err)
	defer warm.w.Close()
	fmt.Println("OPEN-READY")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var n int
		if _, err := fmt.Sscanf(in.Text(), "round %d", &n); err == nil {
			lat := make([]float64, 0, n)
			for i := 0; i < n; i++ {
				start := time.Now()
				t, err := open(tr)
				check(err)
				lat = append(lat, float64(time.Since(start).Nanoseconds())/1e6)
				closeGracefully(t)
			}
			b, _ := json.Marshal(lat)
			fmt.Printf("ROUND %s\n", b)
		} else if _, err := fmt.Sscanf(in.Text(), "churn %d", &n); err == nil {
			churnTunnels(tr, n)
			fmt.Printf("CHURN-DONE %d\n", n)
		}
	}
}

// Ends our side and reads the peer's to its end, as a finished connection does.
func closeGracefully(t *tunnel) {
	t.w.Close()
	_, err := io.Copy(io.Discard, t.body)
	check(err)
	t.body.Close()
}

func churnTunnels(tr *http.Transport, n int) {
	var wg sync.WaitGroup
	jobs := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		jobs <- struct{}{}
	}
	close(jobs)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				t, err := open(tr)
				check(err)
				closeGracefully(t)
			}
		}()
	}
	wg.Wait()
}
