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
