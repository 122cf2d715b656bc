# NSA_CHECK_CFLAG(FLAG, VAR): append FLAG to VAR when the C compiler takes it
# (warnings as errors while probing, so an unknown flag is not kept).
AC_DEFUN([NSA_CHECK_CFLAG], [
  AC_MSG_CHECKING([whether $CC accepts $1])
  nsa_save_CFLAGS=$CFLAGS
  CFLAGS="$CFLAGS -Werror $1"
  AC_COMPILE_IFELSE([AC_LANG_PROGRAM([], [])],
    [AC_MSG_RESULT([yes]); $2="$$2 $1"],
    [AC_MSG_RESULT([no])])
  CFLAGS=$nsa_save_CFLAGS
])
