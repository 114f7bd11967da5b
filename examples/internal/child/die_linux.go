package child

import (
	"os/exec"
	"syscall"
)

// DieWithParent has the kernel kill cmd's process if this one dies, even
// by SIGKILL, so that it never outlives the process that would stop it.
func DieWithParent(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
