package control

import (
	"reflect"
	"testing"
)

func TestArgs(t *testing.T) {
	got, err := Args(map[string]string{"b": "2", "a": "1", "c": "3"},
		[]string{"c=user", "--feature-gates=X=true", "feature-gates=Y=false"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"--a=1", "--b=2", "--c=user", "--feature-gates=X=true", "--feature-gates=Y=false"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
	if _, err := Args(nil, []string{"novalue"}); err == nil {
		t.Error("an argument without = must be refused")
	}
}

func TestSecurePort(t *testing.T) {
	if p := SecurePort([]string{"--bind-address=127.0.0.1"}); p != 10257 {
		t.Errorf("default %d", p)
	}
	if p := SecurePort([]string{"--secure-port=10257", "--secure-port=31000"}); p != 31000 {
		t.Errorf("the last (user) value must win: %d", p)
	}
}
