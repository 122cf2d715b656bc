# NSA_CHECK_ISA(NAME, FLAGS, INCLUDES, BODY, FLAGS-VAR)
# Whether $CC compiles and links a program that uses an instruction set's
# intrinsics when given FLAGS (and only then). On success FLAGS-VAR is set to
# FLAGS and nsa_have_NAME=yes, else nsa_have_NAME=no. The flags are tried on
# their own, never added to CFLAGS: only the kernel file of that ISA gets them.
AC_DEFUN([NSA_CHECK_ISA], [
  AC_MSG_CHECKING([whether $CC builds $1 intrinsics with flags '$2'])
  nsa_isa_save_CFLAGS=$CFLAGS
  CFLAGS="$CFLAGS $2"
  AC_LINK_IFELSE([AC_LANG_PROGRAM([$3], [$4])],
    [nsa_have_$1=yes
     $5="$2"],
    [nsa_have_$1=no])
  CFLAGS=$nsa_isa_save_CFLAGS
  AC_MSG_RESULT([$nsa_have_$1])
])
