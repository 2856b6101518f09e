// csrtool makes PKCS#10 requests the way Istio's Go agent does (crypto/x509 CreateCertificateRequest)
// and reports what Go's parser, the one istiod runs, thinks of requests made elsewhere.
//
//	csrtool make <spiffe-id>   JSON {"rsa2048": pem, "p256": pem, "p384": pem} on stdout
//	csrtool check              JSON [pem, ...] on stdin, JSON ["ok" | go error, ...] on stdout
package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/url"
	"os"
)

func request(key crypto.Signer, id *url.URL) string {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id}}, key)
	if err != nil {
		panic(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func check(p string) string {
	block, _ := pem.Decode([]byte(p))
	if block == nil {
		return "no PEM block"
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return err.Error()
	}
	if err := csr.CheckSignature(); err != nil {
		return err.Error()
	}
	return "ok"
}

func main() {
	out := json.NewEncoder(os.Stdout)
	switch {
	case len(os.Args) == 3 && os.Args[1] == "make":
		id, err := url.Parse(os.Args[2])
		if err != nil {
			panic(err)
		}
		r, _ := rsa.GenerateKey(rand.Reader, 2048)
		p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		_ = out.Encode(map[string]string{"rsa2048": request(r, id), "p256": request(p256, id), "p384": request(p384, id)})
	case len(os.Args) == 2 && os.Args[1] == "check":
		var pems []string
		if err := json.NewDecoder(os.Stdin).Decode(&pems); err != nil {
			panic(err)
		}
		verdicts := make([]string, len(pems))
		for i, p := range pems {
			verdicts[i] = check(p)
		}
		_ = out.Encode(verdicts)
	default:
		fmt.Fprintln(os.Stderr, "usage: csrtool make <spiffe-id> | csrtool check")
		os.Exit(2)
	}
}
