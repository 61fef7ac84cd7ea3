package launcher

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
)

// A release binary is the launcher's executable with the payload appended
// and a fixed-size trailer last, so the launcher finds its payload by
// reading the end of its own file (ELF loaders ignore what follows the
// program):
//
//	[launcher ELF][payload: zstd tar, pkg/data/payload][trailer, TrailerSize bytes]
//
// Trailer, little endian:
//
//	 0  uint64    payload offset from the start of the file
//	 8  uint64    payload size
//	16  [32]byte  sha256 of the payload; names <data-dir>/data/<sha256>
//	48  [64]byte  name of the binary to run, bin/<name> in the payload, NUL-padded
//	112 [16]byte  Magic
const TrailerSize = 128

// Magic ends every release binary; the digit is the trailer format's version.
const Magic = "berth-launcher-1"

const execNameSize = 64

// ErrNoTrailer means the file does not end in a trailer: a bare launcher.
var ErrNoTrailer = errors.New("no payload appended (no " + Magic + " trailer)")

// Trailer locates the payload in a release binary.
type Trailer struct {
	Offset int64  // where the payload starts
	Size   int64  // its length in bytes
	Hash   string // sha256 of the payload, lower-case hex
	Exec   string // the payload's bin/<Exec> is the program to run
}

// MarshalBinary encodes t as the TrailerSize bytes that end a release binary.
func (t Trailer) MarshalBinary() ([]byte, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	b := make([]byte, TrailerSize)
	binary.LittleEndian.PutUint64(b[0:], uint64(t.Offset))
	binary.LittleEndian.PutUint64(b[8:], uint64(t.Size))
	if _, err := hex.Decode(b[16:48], []byte(t.Hash)); err != nil {
		return nil, fmt.Errorf("payload hash %q: %w", t.Hash, err)
	}
	copy(b[48:48+execNameSize], t.Exec)
	copy(b[112:], Magic)
	return b, nil
}

// ReadTrailer reads the trailer of a release binary of the given size and
// checks that it describes a payload lying between the launcher and the
// trailer.
func ReadTrailer(r io.ReaderAt, size int64) (Trailer, error) {
	if size < TrailerSize {
		return Trailer{}, ErrNoTrailer
	}
	b := make([]byte, TrailerSize)
	if _, err := r.ReadAt(b, size-TrailerSize); err != nil {
		return Trailer{}, fmt.Errorf("reading the trailer: %w", err)
	}
	if string(b[112:]) != Magic {
		return Trailer{}, ErrNoTrailer
	}
	t := Trailer{
		Offset: int64(binary.LittleEndian.Uint64(b[0:])),
		Size:   int64(binary.LittleEndian.Uint64(b[8:])),
		Hash:   hex.EncodeToString(b[16:48]),
		Exec:   string(bytes.TrimRight(b[48:48+execNameSize], "\x00")),
	}
	if err := t.check(); err != nil {
		return Trailer{}, err
	}
	if t.Offset+t.Size != size-TrailerSize {
		return Trailer{}, fmt.Errorf("trailer says the payload is %d bytes at %d, but the file is %d bytes: truncated or altered",
			t.Size, t.Offset, size)
	}
	return t, nil
}

func (t Trailer) check() error {
	if t.Offset <= 0 || t.Size <= 0 {
		return fmt.Errorf("bad payload offset %d or size %d", t.Offset, t.Size)
	}
	if len(t.Hash) != 64 {
		return fmt.Errorf("payload hash %q is not a sha256", t.Hash)
	}
	if t.Exec == "" || len(t.Exec) > execNameSize || strings.ContainsAny(t.Exec, "/\x00") ||
		t.Exec == "." || t.Exec == ".." || strings.HasPrefix(t.Exec, ".") {
		return fmt.Errorf("bad program name %q", t.Exec)
	}
	return nil
}

// Write writes a release binary to w: the launcher executable, the payload
// (a compressed payload tar) and the trailer naming exec as the program to
// run. It returns the trailer written.
func Write(w io.Writer, launcher, payload io.Reader, exec string) (Trailer, error) {
	off, err := io.Copy(w, launcher)
	if err != nil {
		return Trailer{}, fmt.Errorf("writing the launcher: %w", err)
	}
	h := sha256.New()
	size, err := io.Copy(io.MultiWriter(w, h), payload)
	if err != nil {
		return Trailer{}, fmt.Errorf("writing the payload: %w", err)
	}
	t := Trailer{Offset: off, Size: size, Hash: hex.EncodeToString(h.Sum(nil)), Exec: exec}
	b, err := t.MarshalBinary()
	if err != nil {
		return Trailer{}, err
	}
	if _, err := w.Write(b); err != nil {
		return Trailer{}, fmt.Errorf("writing the trailer: %w", err)
	}
	return t, nil
}
