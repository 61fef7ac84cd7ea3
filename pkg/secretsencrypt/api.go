package secretsencrypt

// Endpoints on the supervisor port (k3s: /v1-k3s/encrypt/{status,config}).
const (
	StatusPath = "/v1-berth/encrypt/status"
	ConfigPath = "/v1-berth/encrypt/config"
)

// Commands of `berth secrets-encrypt` that change something.
const (
	CmdEnable     = "enable"
	CmdDisable    = "disable"
	CmdPrepare    = "prepare"
	CmdRotate     = "rotate"
	CmdReencrypt  = "reencrypt"
	CmdRotateKeys = "rotate-keys"
)

// Request is the body of PUT ConfigPath.
type Request struct {
	Command string `json:"command"`
	// Force skips the stage check.
	Force bool `json:"force,omitempty"`
	// Skip (reencrypt) keeps the inactive keys after rewriting.
	Skip bool `json:"skip,omitempty"`
}

// Response answers a Request: Message says what was done or started.
// When Started, the work goes on in the server; Status shows its progress.
type Response struct {
	Message string `json:"message"`
	Started bool   `json:"started"`
}

// Status answers GET StatusPath.
type Status struct {
	// Configured is false when the server has no encryption config.
	Configured bool   `json:"configured"`
	Enabled    bool   `json:"enabled"`
	Stage      string `json:"stage,omitempty"`
	// HashMatch: every server's configuration hash is the same, and this
	// server's apiserver has loaded its file. HashError says why not.
	HashMatch bool   `json:"hashMatch"`
	HashError string `json:"hashError,omitempty"`
	// ConfigHash is sha256:<hex> of the file; LoadedHash is the apiserver's.
	ConfigHash string      `json:"configHash,omitempty"`
	LoadedHash string      `json:"loadedHash,omitempty"`
	Keys       []KeyStatus `json:"keys,omitempty"`
	// Running: a command's work is under way (Progress counts Secrets).
	Running  bool      `json:"running"`
	Command  string    `json:"command,omitempty"`
	Progress *Progress `json:"progress,omitempty"`
	// LastError is why the last command's work failed (nothing was
	// removed; retry it).
	LastError string `json:"lastError,omitempty"`
}

// KeyStatus is one key, never its secret.
type KeyStatus struct {
	Active   bool   `json:"active"`
	Provider string `json:"provider"`
	Type     string `json:"type"`
	Name     string `json:"name"`
}

// Progress counts rewritten Secrets.
type Progress struct {
	Done int `json:"done"`
}
