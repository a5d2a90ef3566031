/* check_err.c — the error X-macro, HTTP mapping and message helpers. */
#include <check.h>
#include <string.h>

#include "err.h"

START_TEST(test_codes)
{
    ck_assert_str_eq(lr_strerror(LR_OK), "success");
    ck_assert_str_eq(lr_strerror(LR_ENOMEM), "out of memory");
    ck_assert_str_eq(lr_strerror(12345), "unknown error");
    ck_assert_int_eq(lr_err_http(LR_ENOTFOUND), 404);
    ck_assert_int_eq(lr_err_http(LR_EINCOMPAT), 422);
    ck_assert_int_eq(lr_err_http(-999), 500);
}
END_TEST

START_TEST(test_messages)
{
    lr_error e;
    lr_error_clear(&e);
    ck_assert_int_eq(e.code, 0);
    ck_assert_int_eq(lr_error_set(&e, LR_EFORMAT, "tensor '%s' ends at %d", "x", 7), LR_EFORMAT);
    ck_assert_str_eq(e.msg, "tensor 'x' ends at 7");
    ck_assert_int_eq(e.http, 400);
    lr_error_prefix(&e, "%s: ", "model.safetensors");
    ck_assert_str_eq(e.msg, "model.safetensors: tensor 'x' ends at 7");
    ck_assert_int_eq(lr_error_set(NULL, LR_EIO, "ignored"), LR_EIO);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("err");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_codes);
    tcase_add_test(tc, test_messages);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
