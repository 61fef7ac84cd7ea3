// Package logging sends the logs of embedded libraries that do not use klog
// (kine and flannel use logrus) through klog, so berth has one log stream.
package logging

import (
	"io"

	"github.com/sirupsen/logrus"
	"k8s.io/klog/v2"
)

// RouteLogrus makes logrus's standard logger write through klog.
func RouteLogrus() {
	logrus.SetOutput(io.Discard)
	logrus.SetLevel(logrus.InfoLevel)
	logrus.AddHook(klogHook{})
}

type klogHook struct{}

func (klogHook) Levels() []logrus.Level { return logrus.AllLevels }

func (klogHook) Fire(e *logrus.Entry) error {
	msg := e.Message
	switch {
	case e.Level <= logrus.ErrorLevel:
		klog.ErrorDepth(6, msg)
	case e.Level == logrus.WarnLevel:
		klog.WarningDepth(6, msg)
	case e.Level == logrus.InfoLevel:
		klog.InfoDepth(6, msg)
	default:
		klog.V(4).InfoDepth(6, msg)
	}
	return nil
}
