// libpng's simplified API (png_image_*): no setjmp/longjmp, errors come back as a message in the png_image.
#include <png.h>
