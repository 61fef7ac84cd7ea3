package server

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"time"

	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/secretsencrypt"
)

// encryptionRoutes serves `berth secrets-encrypt` (k3s: /v1-k3s/encrypt/*).
func (s *Server) encryptionRoutes(m *secretsencrypt.Manager) map[string]http.Handler {
	return map[string]http.Handler{
		"GET " + secretsencrypt.StatusPath: s.serverAdmin(func(w http.ResponseWriter, r *http.Request) {
			st, err := m.Status(r.Context())
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			writeJSON(w, http.StatusOK, st)
		}),
		"PUT " + secretsencrypt.ConfigPath: s.serverAdmin(func(w http.ResponseWriter, r *http.Request) {
			var req secretsencrypt.Request
			if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
				http.Error(w, "request body: "+err.Error(), http.StatusBadRequest)
				return
			}
			resp, err := m.Apply(req)
			var re *secretsencrypt.RequestError
			switch {
			case errors.As(err, &re):
				http.Error(w, re.Msg, re.Code)
			case err != nil:
				klog.Errorf("Secrets encryption: %s: %v", req.Command, err)
				http.Error(w, err.Error(), http.StatusInternalServerError)
			default:
				writeJSON(w, http.StatusOK, resp)
			}
		}),
	}
}

// serverAdmin admits only who may manage the cluster's keys: the server
// token as user "server" (root-only <data-dir>/server/token, what k3s's
// CLI sends) or a client certificate of group system:masters (the admin
// kubeconfig's). Node certificates, user "node" and bootstrap tokens, which
// agents hold, are refused.
func (s *Server) serverAdmin(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if st := r.TLS; st != nil && len(st.VerifiedChains) > 0 && len(st.VerifiedChains[0]) > 0 &&
			slices.Contains(st.VerifiedChains[0][0].Subject.Organization, "system:masters") {
			h(w, r)
			return
		}
		user, pass, ok := r.BasicAuth()
		if ok && user == "server" && subtle.ConstantTimeCompare([]byte(pass), []byte(s.token.Password)) == 1 {
			h(w, r)
			return
		}
		klog.Infof("secrets-encrypt: refused %s %s from %s", r.Method, r.URL.Path, r.RemoteAddr)
		// Slow down guessing a little; the token is long and random anyway.
		time.Sleep(200 * time.Millisecond)
		http.Error(w, "unauthorized: use the server token (<data-dir>/server/token, user server) or the admin client certificate", http.StatusUnauthorized)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
