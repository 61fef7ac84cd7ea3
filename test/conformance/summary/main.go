// Command summary reads the JUnit reports of the conformance passes
// (scripts/conformance/run.sh) and prints what a maintainer wants to know:
// each pass's wall time and exit status, the failed conformance tests with
// the first line of their failure, and last the line
//
//	N passed, M failed, K skipped
//
// counting conformance tests only (names with [Conformance]). A test that
// ran in one pass and was skipped by the other's focus counts once, by the
// pass that ran it. With -suite (the conformance.yaml of the k8s.io/kubernetes
// module e2e.test comes from) it also names the suite's tests that are in
// no report.
//
//	summary -suite conformance.yaml -passes dist/conformance/passes dist/conformance/parallel dist/conformance/serial
package main

import (
	"bufio"
	"encoding/xml"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

type testcase struct {
	Name    string    `xml:"name,attr"`
	Time    float64   `xml:"time,attr"`
	Failure *message  `xml:"failure"`
	Error   *message  `xml:"error"`
	Skipped *struct{} `xml:"skipped"`
}

type message struct {
	Message string `xml:"message,attr"`
	Text    string `xml:",chardata"`
}

type suites struct {
	Suites []struct {
		Cases []testcase `xml:"testcase"`
	} `xml:"testsuite"`
}

type result int

const (
	skipped result = iota
	failed
	passed
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("summary: ")
	passes := flag.String("passes", "", "file of `name seconds exit-status` lines, one per pass")
	suite := flag.String("suite", "", "the suite's conformance.yaml (test/conformance/testdata in k8s.io/kubernetes)")
	flag.Parse()
	if err := run(*passes, *suite, flag.Args()); err != nil {
		log.Fatal(err)
	}
}

func run(passesFile, suiteFile string, dirs []string) error {
	if passesFile != "" {
		if data, err := os.ReadFile(passesFile); err == nil {
			sc := bufio.NewScanner(strings.NewReader(string(data)))
			for sc.Scan() {
				var name string
				var secs, rc int
				if _, err := fmt.Sscan(sc.Text(), &name, &secs, &rc); err == nil {
					fmt.Printf("%s pass: %dm%02ds wall, ginkgo exit %d\n", name, secs/60, secs%60, rc)
				}
			}
		}
	}
	status := map[string]result{}
	why := map[string]string{}
	for _, dir := range dirs {
		files, _ := filepath.Glob(filepath.Join(dir, "junit_*.xml"))
		if len(files) == 0 {
			fmt.Printf("%s: no JUnit report (the pass did not finish)\n", dir)
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			var s suites
			if err := xml.Unmarshal(data, &s); err != nil {
				return fmt.Errorf("%s: %w", f, err)
			}
			for _, su := range s.Suites {
				for _, c := range su.Cases {
					if !strings.Contains(c.Name, "[Conformance]") {
						continue
					}
					name := strings.Join(strings.Fields(strings.TrimPrefix(c.Name, "[It] ")), " ")
					r := passed
					switch {
					case c.Failure != nil || c.Error != nil:
						r = failed
						m := c.Failure
						if m == nil {
							m = c.Error
						}
						why[name] = firstLine(m.Message + "\n" + m.Text)
					case c.Skipped != nil:
						r = skipped
					}
					if old, ok := status[name]; !ok || r > old {
						status[name] = r
					}
				}
			}
		}
	}
	var n [3]int
	var failedNames []string
	for name, r := range status {
		n[r]++
		if r == failed {
			failedNames = append(failedNames, name)
		}
	}
	sort.Strings(failedNames)
	if len(failedNames) > 0 {
		fmt.Println("failed:")
		for _, name := range failedNames {
			fmt.Printf("  %s\n      %s\n", name, why[name])
		}
	}
	if suiteFile != "" {
		data, err := os.ReadFile(suiteFile)
		if err != nil {
			return err
		}
		var suite []struct {
			Codename string `json:"codename"`
		}
		if err := yaml.Unmarshal(data, &suite); err != nil {
			return fmt.Errorf("%s: %w", suiteFile, err)
		}
		var missing []string
		for _, t := range suite {
			if _, ok := status[strings.Join(strings.Fields(t.Codename), " ")]; !ok {
				missing = append(missing, t.Codename)
			}
		}
		if len(missing) > 0 {
			fmt.Printf("not run (%d of the suite's %d; a focus was set, or a pass did not finish):\n", len(missing), len(suite))
			for _, name := range missing {
				fmt.Printf("  %s\n", name)
			}
		}
	}
	fmt.Printf("%d passed, %d failed, %d skipped\n", n[passed], n[failed], n[skipped])
	return nil
}

func firstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			if len(l) > 200 {
				l = l[:200] + "…"
			}
			return l
		}
	}
	return ""
}
