#include <stdarg.h>
#include <stdio.h>
#include <tiffio.h>

// libtiff's tag getters are C-variadic, which Swift cannot call; these typed wrappers can be.
static inline int resnetkit_tiff_get_u16(TIFF *tif, uint32_t tag, uint16_t *value) {
    return TIFFGetFieldDefaulted(tif, tag, value);
}
static inline int resnetkit_tiff_get_u32(TIFF *tif, uint32_t tag, uint32_t *value) {
    return TIFFGetFieldDefaulted(tif, tag, value);
}

// The first libtiff error or warning of one TIFF handle, kept per handle (thread-safe) instead of
// going to stderr, so that it can be reported in the caller's one-line error.
typedef struct { char message[400]; } ResNetKitTIFFMessages;

static inline int resnetkit_tiff_capture(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap) {
    (void)tif; (void)module;
    ResNetKitTIFFMessages *messages = (ResNetKitTIFFMessages *)user;
    if (messages && messages->message[0] == 0) vsnprintf(messages->message, sizeof messages->message, fmt, ap);
    return 1;  // handled: libtiff's global (stderr) handler is not called
}

static inline int resnetkit_tiff_ignore(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap) {
    (void)tif; (void)user; (void)module; (void)fmt; (void)ap;
    return 1;
}

// Opens `fd` (owned by the TIFF afterwards) with errors captured into `errors`, warnings dropped,
// and no single allocation larger than `max_alloc` bytes.
static inline TIFF *resnetkit_tiff_open(int fd, const char *name, ResNetKitTIFFMessages *errors, tmsize_t max_alloc) {
    TIFFOpenOptions *options = TIFFOpenOptionsAlloc();
    if (!options) return NULL;
    TIFFOpenOptionsSetErrorHandlerExtR(options, resnetkit_tiff_capture, errors);
    TIFFOpenOptionsSetWarningHandlerExtR(options, resnetkit_tiff_ignore, NULL);
    TIFFOpenOptionsSetMaxSingleMemAlloc(options, max_alloc);
    TIFF *tif = TIFFFdOpenExt(fd, name, "rm", options);  // "m": read, no memory-mapping (truncated files fail cleanly)
    TIFFOpenOptionsFree(options);
    return tif;
}

// Slides and float maps (infer-slide, explain): SubIFD offsets, JPEG colour conversion and the setters a
// writer needs, as typed wrappers of the variadic calls.
static inline int resnetkit_tiff_get_subifds(TIFF *tif, uint16_t *count, uint64_t **offsets) {
    return TIFFGetField(tif, TIFFTAG_SUBIFD, count, offsets);
}
static inline int resnetkit_tiff_set_u16(TIFF *tif, uint32_t tag, uint16_t value) {
    return TIFFSetField(tif, tag, value);
}
static inline int resnetkit_tiff_set_u32(TIFF *tif, uint32_t tag, uint32_t value) {
    return TIFFSetField(tif, tag, value);
}
static inline int resnetkit_tiff_set_int(TIFF *tif, uint32_t tag, int value) {
    return TIFFSetField(tif, tag, value);
}
static inline int resnetkit_tiff_set_subifds(TIFF *tif, uint16_t count) {
    uint64_t zeros[16] = {0};
    return TIFFSetField(tif, TIFFTAG_SUBIFD, count, zeros);
}
