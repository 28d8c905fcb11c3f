# PLDR_CHECK_DEP(VAR, PKG-MODULE, FUNCTION, LIBRARY, HEADER, DEBIAN-PACKAGES)
# ---------------------------------------------------------------------------
# Finds a dependency through pkg-config, or else by searching for FUNCTION in
# LIBRARY and for HEADER; sets VAR_CFLAGS and VAR_LIBS. When it is missing,
# stops with a message naming the Debian packages that provide it.
AC_DEFUN([PLDR_CHECK_DEP], [
  PKG_CHECK_MODULES([$1], [$2], [pldr_dep_found=yes], [pldr_dep_found=no])
  AS_IF([test "x$pldr_dep_found" = xno], [
    pldr_save_LIBS=$LIBS
    LIBS=""
    AC_SEARCH_LIBS([$3], [$4], [$1_LIBS="$LIBS"; pldr_dep_found=yes], [pldr_dep_found=no])
    LIBS=$pldr_save_LIBS
    $1_CFLAGS=""
  ])
  AS_IF([test "x$pldr_dep_found" = xyes], [
    pldr_save_CPPFLAGS=$CPPFLAGS
    CPPFLAGS="$CPPFLAGS $$1_CFLAGS"
    AC_CHECK_HEADER([$5], [], [pldr_dep_found=no])
    CPPFLAGS=$pldr_save_CPPFLAGS
  ])
  AS_IF([test "x$pldr_dep_found" = xno],
        [AC_MSG_ERROR([$4 ($5) not found: on Debian or Ubuntu, install it with: apt-get install $6])])
  AC_SUBST([$1_CFLAGS])
  AC_SUBST([$1_LIBS])
])
