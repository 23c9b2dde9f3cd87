# cuBLASLt at build time: the HEADER only. The library is never linked and no path to it is baked
# into the module: csrc/cuda opens libcublasLt.so.<major> at run time (FASTNN_CUBLASLT, an already
# loaded copy, the nvidia-cublas wheel on sys.path, the soname), so one wheel works with the
# `fastnn-cu13[cublas]` extra, a toolkit install, or a library the user points to.
#
# fastnn_find_cublaslt_header(<cuda major>) sets, in the caller's scope:
#   FASTNN_HAVE_CUBLASLT      ON when cublasLt.h was found
#   FASTNN_CUBLASLT_INCLUDE   the directory holding cublasLt.h
#   FASTNN_CUBLASLT_SONAME    libcublasLt.so.<major> (what the run-time lookup opens last)
# Searched, first hit wins: FASTNN_CUBLASLT_ROOT (cache variable, then environment; a directory with
# include/cublasLt.h), the CUDA toolkit's include directories, then the nvidia-cublas wheel as the
# building Python sees it (nvidia/cu<major>/include for cuBLAS 13, nvidia/cublas/include before).
set(FASTNN_CUBLASLT_ROOT "" CACHE PATH "Directory with include/cublasLt.h (else the toolkit, else the nvidia-cublas wheel)")

function(fastnn_find_cublaslt_header major)
  set(roots ${FASTNN_CUBLASLT_ROOT})
  if(DEFINED ENV{FASTNN_CUBLASLT_ROOT})
    list(APPEND roots $ENV{FASTNN_CUBLASLT_ROOT})
  endif()
  set(dirs)
  foreach(r IN LISTS roots)
    list(APPEND dirs "${r}/include")
  endforeach()
  list(APPEND dirs ${CUDAToolkit_INCLUDE_DIRS})
  # The wheel's package directories through importlib, so PYTHONPATH and --target installs count.
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import importlib.util as u\nfor n in ('nvidia.cu${major}', 'nvidia.cublas'):\n  try:\n    s = u.find_spec(n)\n  except Exception:\n    s = None\n  if s and s.submodule_search_locations:\n    print(list(s.submodule_search_locations)[0] + '/include')"
    OUTPUT_VARIABLE py_dirs OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  string(REPLACE "\n" ";" py_dirs "${py_dirs}")
  list(APPEND dirs ${py_dirs})
  set(found "")
  foreach(d IN LISTS dirs)
    if(d AND EXISTS "${d}/cublasLt.h")
      set(found "${d}")
      break()
    endif()
  endforeach()
  set(FASTNN_CUBLASLT_SONAME "libcublasLt.so.${major}" PARENT_SCOPE)
  if(found)
    message(STATUS "fastnn: cuBLASLt header from ${found}")
    set(FASTNN_HAVE_CUBLASLT ON PARENT_SCOPE)
    set(FASTNN_CUBLASLT_INCLUDE "${found}" PARENT_SCOPE)
  else()
    set(FASTNN_HAVE_CUBLASLT OFF PARENT_SCOPE)
    set(FASTNN_CUBLASLT_INCLUDE "" PARENT_SCOPE)
  endif()
endfunction()
