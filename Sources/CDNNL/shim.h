// oneDNN's C API (Debian libdnnl-dev 2.6; the package ships no pkg-config file, hence the plain link).
#include <oneapi/dnnl/dnnl.h>
